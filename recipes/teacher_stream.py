"""The cloud teacher over the stream (issue 30): frozen vs fresh teacher, distilled edits, request policies.

For one dataset (shift protocol) and device seeds: the frozen teacher (the ensemble of trained
checkpoints) and the fresh teacher (:class:`llm_cloud.fresh_teacher.FreshTeacher`, its refresh settings
chosen on the validation period) serve every validation and test event; for every event the cloud solves
the device's distilled edit (:func:`llm_cloud.distill.distilled_edit`) and keeps the teacher's top-k list.
Then each request policy at each rate decides which test events ask; the device holds the last answer
between asks (:mod:`llm_cloud.request_sim`). Metrics are per row (:mod:`recsys.metrics`, RecBole's full
ranking) so every policy is scored on the same rows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llm_cloud.distill import DistillConfig, distilled_edit
from llm_cloud.fresh_teacher import FreshTeacher, RefreshConfig, TeacherVersion
from llm_cloud.request_sim import (
    FEATURES,
    Detector,
    DeviceView,
    before_asking,
    detector_holders,
    features_of_rows,
    holders,
    oracle_asks,
    random_asks,
    training_set,
)
from llm_cloud.stream import StreamRows
from llm_cloud.teacher import EnsembleTeacher
from recsys import metrics, ood, run_layout
from recsys.checkpoint import load_checkpoint
from recsys.evaluate import target_slices
from recsys.metrics import auroc
from recsys.models import EditableSeqRec
from recsys.splits import SplitData

RATES = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class TeacherPass:
    """Per stream row from ``first``: the teacher's target rank, its top-k list, each device's fresh edit."""

    first: int
    ranks: torch.Tensor  # [N]
    lists: torch.Tensor  # [N, k]
    deltas: list[torch.Tensor]  # per device [N, D]
    versions: list[dict] = field(default_factory=list)  # start, valid_from, trained_until of each version


def run_checkpoints(runs: Path, dataset: str, device_model: str, seeds: list[int], teacher_models: list[str],
                    teacher_seeds: list[int]) -> tuple[EnsembleTeacher, dict[int, EditableSeqRec]]:  # fmt: skip
    """The teacher (every ``teacher_models`` × ``teacher_seeds`` checkpoint under ``runs``) and the device
    ``device_model`` at each of ``seeds``, each checked to share the teacher's item vocabulary."""
    teacher = EnsembleTeacher.load([run_layout.seed_dir(runs, dataset, m, s) for m in teacher_models
                                    for s in teacher_seeds])  # fmt: skip
    devices = {}
    for seed in seeds:
        model, _, tokens = load_checkpoint(run_layout.seed_dir(runs, dataset, device_model, seed))
        teacher.check_serves(tokens, f"{device_model} seed {seed}")
        devices[seed] = model
    return teacher, devices


def stream_of(split: SplitData, limit: int = 0) -> tuple[StreamRows, int]:
    """Validation then test events as one stream (the first ``limit`` of each; 0 = all), and the index of the
    first test row."""
    uid, tf = split.config["USER_ID_FIELD"], split.config["TIME_FIELD"]
    valid = StreamRows.from_rows(split.eval_rows("valid"), uid, tf)
    test = StreamRows.from_rows(split.eval_rows("test"), uid, tf)
    if limit:
        valid, test = valid.part(0, limit), test.part(0, limit)
    return StreamRows.concat([valid, test]), len(valid)


def frozen_versions(teacher: EnsembleTeacher, stream: StreamRows, first: int) -> list[TeacherVersion]:
    return [TeacherVersion(first, len(stream), float(stream.time[first]), None, teacher)]


def teacher_pass(versions, stream: StreamRows, first: int, devices: list[EditableSeqRec], cfg: DistillConfig,
                 k: int, batch: int = 512, solve: bool = True) -> TeacherPass:  # fmt: skip
    """Every row from ``first`` scored by the version serving it, with each device's fresh edit (``solve``)."""
    ranks, lists, deltas, seen = [], [], [[] for _ in devices], []
    for v in versions:
        seen.append({"start": v.start, "valid_from": v.valid_from, "trained_until": v.trained_until})
        for i in tqdm(range(v.start, v.stop, batch), desc=f"teacher rows {v.start}-{v.stop}", leave=False):
            rows = slice(i, min(i + batch, v.stop))
            seq, length = stream.seq[rows], stream.length[rows]
            with torch.no_grad():
                lp = v.teacher.log_probs(seq, length)
            ranks.append(metrics.target_rank(lp, stream.target[rows]))
            lists.append(lp[:, 1:].topk(k, dim=-1).indices + 1)
            for d, model in enumerate(devices if solve else []):
                deltas[d].append(distilled_edit(model, seq, length, lp, cfg).db[-1])
    return TeacherPass(first, torch.cat(ranks), torch.cat(lists), [torch.cat(d) for d in deltas if d], seen)


def fresh_teacher_valid_score(members: EnsembleTeacher, split: SplitData, cfg: RefreshConfig | None,
                              limit: int = 0) -> float:  # fmt: skip
    """Teacher NDCG@10 on the validation period, refreshing inside it with ``cfg`` (None: frozen; selection only)."""
    stream, n_valid = stream_of(split, limit)
    valid = stream.part(0, n_valid)
    if cfg is None:
        versions = frozen_versions(members, valid, 0)
    else:
        versions = FreshTeacher(copy.deepcopy(members), split.train_sequences, cfg).versions(valid, 0)
    tp = teacher_pass(versions, valid, 0, [], DistillConfig(), k=10, solve=False)
    return float(metrics.ndcg(tp.ranks).mean())


def teacher_table(split: SplitData, members: EnsembleTeacher, refresh: RefreshConfig,
                  limit: int = 0) -> tuple[dict[str, list[dict]], list[dict]]:  # fmt: skip
    """Frozen vs fresh teacher on the test period, no device: ``{method: [metrics]}`` and the fresh versions.
    The fresh teacher refreshes on the validation rows before the first test row, then every
    ``refresh.every_events`` rows inside the test period."""
    stream, n_valid = stream_of(split, limit)
    test = stream.part(n_valid, len(stream))
    fresh_teacher = FreshTeacher(copy.deepcopy(members), split.train_sequences, refresh)
    def ranked(versions) -> TeacherPass:
        return teacher_pass(versions, stream, n_valid, [], DistillConfig(), k=10, solve=False)

    frozen, fresh = ranked(frozen_versions(members, stream, n_valid)), ranked(fresh_teacher.versions(stream, n_valid))
    table = {name: [row_metrics(tp.ranks, test.target, split.train_counts)]
             for name, tp in (("teacher, frozen", frozen), ("teacher, fresh", fresh))}  # fmt: skip
    return table, fresh.versions


def row_metrics(ranks: torch.Tensor, targets: torch.Tensor, train_counts: np.ndarray) -> dict[str, float]:
    """Means over rows, and over the new / seen / tail slices (with their row counts)."""
    out = {key: float(v.mean()) for key, v in metrics.per_ranks(ranks).items()}
    for name, mask in target_slices(targets, train_counts).items():
        out[f"{name}/rows"] = float(mask.sum())
        if mask.any():
            out[f"{name}/ndcg@10"] = float(metrics.ndcg(ranks[mask]).mean())
            out[f"{name}/hit@10"] = float(metrics.hit(ranks[mask]).mean())
    return out


Curves = dict[str, dict[float, dict]]
TTLS = {"": None, ", for its event only": 0}  # how long a device keeps an answer: until the next ask, or 0 events


def policy_curves(view: DeviceView, deltas: torch.Tensor, lists: torch.Tensor, previous: np.ndarray,
                  detectors: dict[int | None, Detector], seed: int) -> Curves:  # fmt: skip
    """``{policy: {rate: {"ndcg@10", "rate"}}}``: edits under random / oracle / detector, kept until the next ask
    or for the asking event only, and the teacher's top-k list under random asks."""
    curves: Curves = {}
    for suffix, ttl in TTLS.items():
        gain = oracle_gain(view, deltas, previous, ttl)
        for rate in RATES:
            plans = {"random": holders(random_asks(len(previous), rate, seed), previous, ttl),
                     "oracle": holders(oracle_asks(gain, rate, seed), previous, ttl),
                     "detector": detector_holders(view, deltas, detectors[ttl], rate, previous, ttl)}  # fmt: skip
            for name, holder in plans.items():
                curves.setdefault(name + suffix, {})[rate] = _point(metrics.ndcg(view.ranks(deltas, holder)), holder)
    for rate in RATES:
        holder = holders(random_asks(len(previous), rate, seed), previous)
        curves.setdefault("top-k list, random", {})[rate] = _point(metrics.ndcg(view.list_ranks(lists, holder)), holder)
    return curves


def oracle_gain(view: DeviceView, deltas: torch.Tensor, previous: np.ndarray, ttl: int | None) -> np.ndarray:
    """Per row, NDCG@10 of a fresh edit minus that of what the device would hold without asking: the previous
    row's edit (kept answers) or none (answers for their event only). Known only afterwards."""
    reference = before_asking(np.arange(len(previous)), previous) if ttl is None else np.full(len(previous), -1)
    return (metrics.ndcg(view.ranks(deltas)) - metrics.ndcg(view.ranks(deltas, reference))).numpy()


def _point(ndcg: torch.Tensor, holder: np.ndarray) -> dict:
    return {"ndcg@10": float(ndcg.mean()), "rate": float(np.mean(holder == np.arange(len(holder))))}


def fit_detectors(view: DeviceView, deltas: torch.Tensor, previous: np.ndarray) -> dict[int | None, Detector]:
    """A detector per answer lifetime, fitted on the validation period (the rows of a random 20 % policy)."""
    return {ttl: Detector.fit(*training_set(view, deltas, previous, ttl)) for ttl in TTLS.values()}


def miss_aurocs(view: DeviceView, detector: Detector) -> dict[str, float]:
    """AUROC at flagging the device's own misses (target outside its top 10), no edit held: the detector's
    score beside the entropy of the device's distribution."""
    n = len(view.targets)
    x = features_of_rows(view, None, np.full(n, -1), np.zeros(n, dtype=np.int64))
    missed = (view.ranks(None) >= ood.MISS_AT).numpy().astype(np.int64)
    return {"detector": auroc(detector.score(x), missed), "entropy": auroc(x[:, FEATURES.index("entropy")], missed)}


@dataclass
class StreamResults:
    table: dict[str, list[dict]]  # method -> per-seed metrics (test period)
    curves: dict[str, dict[int, dict]]  # teacher kind -> seed -> policy -> rate -> point
    aurocs: dict[int, dict[str, float]]
    versions: list[dict]
    detector_weights: dict[int, list[float]]


def evaluate_stream(split: SplitData, devices: dict[int, EditableSeqRec], members: EnsembleTeacher,
                    refresh: RefreshConfig, dcfg: DistillConfig, k: int, limit: int = 0) -> StreamResults:  # fmt: skip
    stream, n_valid = stream_of(split, limit)
    valid, test = stream.part(0, n_valid), stream.part(n_valid, len(stream))
    models = list(devices.values())
    frozen = teacher_pass(frozen_versions(members, stream, 0), stream, 0, models, dcfg, k)
    fresh_teacher = FreshTeacher(copy.deepcopy(members), split.train_sequences, refresh)
    fresh = teacher_pass(fresh_teacher.versions(stream, n_valid), stream, n_valid, models, dcfg, k)
    seen = torch.as_tensor(split.train_counts > 0)
    prev_valid, prev_test = valid.previous(), test.previous()
    table: dict[str, list[dict]] = {}
    curves: dict[str, dict[int, dict]] = {"frozen": {}, "fresh": {}}
    aurocs, weights = {}, {}

    def add(method: str, ranks: torch.Tensor) -> None:
        table.setdefault(method, []).append(row_metrics(ranks, test.target, split.train_counts))

    for d, (seed, model) in enumerate(tqdm(devices.items(), desc="device seeds")):
        vview = DeviceView.build(model, valid.seq, valid.length, valid.target, seen)
        tview = DeviceView.build(model, test.seq, test.length, test.target, seen)
        detectors = fit_detectors(vview, frozen.deltas[d][:n_valid], prev_valid)
        add("device alone", tview.ranks(None))
        add("teacher, frozen (upper bound)", frozen.ranks[n_valid:])
        add("teacher, fresh (upper bound)", fresh.ranks)
        add("device + fresh edit, frozen teacher", tview.ranks(frozen.deltas[d][n_valid:]))
        add("device + fresh edit, fresh teacher", tview.ranks(fresh.deltas[d]))
        for kind, tp, lists in (("frozen", frozen.deltas[d][n_valid:], frozen.lists[n_valid:]),
                                ("fresh", fresh.deltas[d], fresh.lists)):  # fmt: skip
            curves[kind][seed] = policy_curves(tview, tp, lists, prev_test, detectors, seed)
        aurocs[seed] = miss_aurocs(tview, detectors[None])
        weights[seed] = detectors[None].weights.tolist()
    return StreamResults(table, curves, aurocs, fresh.versions, weights)
