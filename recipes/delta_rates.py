"""The item delta beside the per-request edit, over request rates: what reaches the events that do not ask.

Frozen teacher (the run's checkpoints). For each device seed: the item delta is fitted on the validation period
(:func:`llm_cloud.item_delta.fit_item_delta` on the validation rows' states and teacher distributions — under the
shift protocol every one before the test period; under the order protocol each user's validation event before
their test event, as the protocol's base models were trained), then for every test row the cloud's fresh
per-request edit is solved against the device's table with and without the delta
(:func:`llm_cloud.distill.distilled_edit`). A random policy asks at
each rate and the device holds the last answer until its user's next ask (:func:`llm_cloud.request_sim.holders`);
the teacher's top-k list, shipped and held the same way, is the alternative a user would pick. Metrics per row
(:mod:`recsys.metrics`, RecBole's full ranking), so every method is scored on the same rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from llm_cloud.distill import DistillConfig, distilled_edit
from llm_cloud.item_delta import ItemDeltaConfig, fit_item_delta
from llm_cloud.request_sim import DeviceView, holders, random_asks
from llm_cloud.stream import StreamRows
from llm_cloud.teacher import EnsembleTeacher
from recipes.teacher_stream import RATES, row_metrics, stream_of
from recsys import metrics
from recsys.models import EditableSeqRec
from recsys.splits import SplitData

BATCH = 512
AT_RATE = 0.2  # the rate the table shows in full (slices included)
POLICIES = ("edit", "item delta + edit", "top-k list", "item delta + top-k list")


@dataclass
class DeltaRates:
    table: dict[str, list[dict]]  # method -> per-seed metrics (test period)
    curves: dict[int, dict[str, dict[float, dict]]]  # seed -> policy -> rate -> {"ndcg@10", "rate"}
    fit_seconds: dict[int, float]  # seed -> seconds to fit the delta


@dataclass
class TeacherRows:
    """The frozen teacher on the stream: log-probs of the validation rows (the delta's fit), and per test row its
    target rank, top-k list and log-probs (the per-request edits' target)."""

    valid_lp: torch.Tensor
    test_lp: torch.Tensor
    test_ranks: torch.Tensor
    test_lists: torch.Tensor


def teacher_rows(teacher: EnsembleTeacher, valid: StreamRows, test: StreamRows, k: int) -> TeacherRows:
    valid_lp, test_lp = (teacher.log_probs_batched(rows.seq, rows.length, BATCH) for rows in (valid, test))
    lists = test_lp[:, 1:].topk(k, dim=-1).indices + 1
    return TeacherRows(valid_lp, test_lp, metrics.target_rank(test_lp, test.target), lists)


def fresh_edits(model: EditableSeqRec, rows: StreamRows, target: torch.Tensor, cfg: DistillConfig,
                items: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """``[N, D]`` every row's per-request edit, solved against ``items`` (None: the device's own table)."""
    return torch.cat([distilled_edit(model, rows.seq[i : i + BATCH], rows.length[i : i + BATCH],
                                     target[i : i + BATCH], cfg, items=items).db[-1]
                      for i in tqdm(range(0, len(rows), BATCH), desc="edits", leave=False)])  # fmt: skip


def periods(split: SplitData, limit: int = 0) -> tuple[StreamRows, StreamRows]:
    """The validation and the test period (shift protocol: every validation event before every test event)."""
    stream, n_valid = stream_of(split, limit)
    return stream.part(0, n_valid), stream.part(n_valid, len(stream))


def time_sorted(split: SplitData, limit: int = 0) -> tuple[StreamRows, StreamRows]:
    """The validation and the test rows, each in time order (order protocol: each user's second-to-last and last
    event, so the two overlap in time; no user's test event comes before their validation one)."""
    uid, tf = split.config["USER_ID_FIELD"], split.config["TIME_FIELD"]
    out = []
    for name in ("valid", "test"):
        rows = split.eval_rows(name)
        order = torch.as_tensor(np.argsort(rows[tf].numpy(), kind="stable"))
        part = StreamRows.from_rows(rows[order], uid, tf)
        out.append(part.part(0, limit) if limit else part)
    return out[0], out[1]


def evaluate_delta_rates(split: SplitData, devices: dict[int, EditableSeqRec], teacher: EnsembleTeacher,
                         dcfg: DistillConfig, icfg: ItemDeltaConfig, k: int = 64,
                         limit: int = 0) -> DeltaRates:  # fmt: skip
    valid, test = (periods if split.protocol == "shift" else time_sorted)(split, limit)
    tr = teacher_rows(teacher, valid, test, k)
    seen = torch.as_tensor(split.train_counts > 0)
    previous = test.previous()
    out = DeltaRates({}, {}, {})

    def add(method: str, ranks: torch.Tensor) -> None:
        out.table.setdefault(method, []).append(row_metrics(ranks, test.target, split.train_counts))

    for seed, model in tqdm(devices.items(), desc="device seeds"):
        t0 = time.perf_counter()
        states = DeviceView.build(model, valid.seq, valid.length, valid.target, seen).states
        table = fit_item_delta(model, states, tr.valid_lp, icfg).table(model.item_embeddings)
        out.fit_seconds[seed] = time.perf_counter() - t0
        views = {"": DeviceView.build(model, test.seq, test.length, test.target, seen),
                 "item delta + ": DeviceView.build(model, test.seq, test.length, test.target, seen, items=table)}
        edits = {"": fresh_edits(model, test, tr.test_lp, dcfg, None),
                 "item delta + ": fresh_edits(model, test, tr.test_lp, dcfg, table)}  # fmt: skip
        add("device alone", views[""].ranks(None))
        add("device + item delta (no request)", views["item delta + "].ranks(None))
        add("teacher (upper bound)", tr.test_ranks)
        out.curves[seed] = {}
        for rate in RATES:
            holder = holders(random_asks(len(test), rate, seed), previous)
            for name, ranks in held_rankings(views, edits, tr.test_lists, holder).items():
                asked = float(np.mean(holder == np.arange(len(holder))))
                out.curves[seed].setdefault(name, {})[rate] = {"ndcg@10": float(metrics.ndcg(ranks).mean()),
                                                               "rate": asked}  # fmt: skip
                if rate in (AT_RATE, 1.0):
                    add(f"device + {name}, {100 * rate:g} % random asks", ranks)
    return out


def held_rankings(views: dict[str, DeviceView], edits: dict[str, torch.Tensor], lists: torch.Tensor,
                  holder: np.ndarray) -> dict[str, torch.Tensor]:  # fmt: skip
    """Target ranks per policy (``POLICIES``) when each row holds the answer of row ``holder``."""
    out = {}
    for prefix, view in views.items():
        out[prefix + "edit"] = view.ranks(edits[prefix], holder)
        out[prefix + "top-k list"] = view.list_ranks(lists, holder)
    return out
