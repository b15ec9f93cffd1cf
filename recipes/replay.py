"""The replay's rows and its scoring: what the live services served, scored as the offline methods are.

A seeded share of a dataset's test users is replayed in time order (:func:`load_rows`): each user's history
before its first replayed row, then its rows' targets. Offline, the same rows are ranked by the static base
model, by the ``served`` method (:func:`llm_cloud.editor.served_edit`, what the cloud's adapter serves) and,
when asked, by the base model with each row's distilled edit (:class:`llm_cloud.distill_editor.DistilledEditor`,
the item delta included). Every rank is 0-based (:func:`recsys.metrics.target_rank`) and every metric comes
from :mod:`recsys.metrics` (:func:`metrics_of`); a replayed condition is compared with its offline method row by
row (:func:`row_by_row`) and conditions are summarised over seeds (:func:`summarise`, :func:`mean_std`).
The HTTP replay itself is :mod:`serving.replay_client`; ``benchmarks/replay.py`` runs it.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llm_cloud.adapter import edited_logits
from llm_cloud.distill import DistillConfig
from llm_cloud.distill_editor import DistilledEditor
from llm_cloud.editor import AdapterEditor, load_editor, served_edit
from recsys import metrics, run_layout
from recsys.config import PersonaConfig
from recsys.experiment import load_dataset_split
from recsys.models import EditableSeqRec

K = 10  # the replay ranks and scores the top 10
BATCH = 512  # offline rows per forward pass
SUMMARY_KEYS = ("ndcg@10", "hit@10", "mrr@10", "cloud_requests_per_event", "downlink_bytes_per_edit", "p50_ms",
                "p99_ms", "non_200")  # fmt: skip


@dataclass
class Rows:
    """The replayed test rows, in time order: user token, history tokens (first row per user), target."""

    user: list[str]
    target: list[str]
    history: dict[str, list[str]]  # user → items stored before its first replayed row
    static_rank: np.ndarray  # offline rank of each target (0 = top) by the static base model
    served_rank: np.ndarray  # … by the ``served`` method (what the cloud serves)
    distilled_rank: np.ndarray | None  # … by the base model with the row's offline distilled edit (when asked)
    dataset: str
    n_users: int
    consistent: float  # share of rows whose history is the previous row's history + target


# ---------------------------------------------------------------- the rows


def chosen_rows(user_ids: np.ndarray, timestamps: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Indices of the rows of ``share`` of the users (at least one; a seeded sample), in time order (stable: a
    user's rows keep their order)."""
    users = sorted(np.unique(user_ids).tolist())
    chosen = set(random.Random(seed).sample(users, max(1, round(share * len(users)))))
    idx = np.array([i for i in range(len(user_ids)) if user_ids[i] in chosen])
    return idx[np.argsort(timestamps[idx], kind="stable")]


def first_histories(users: Sequence[str], seq: torch.Tensor, length: torch.Tensor, target: torch.Tensor,
                    tokens: Sequence[str]) -> tuple[dict[str, list[str]], float]:  # fmt: skip
    """Each user's history (item tokens) before its first row, and the share of its later rows whose history is
    the previous row's history + target (what the replay stores by posting each target)."""
    history: dict[str, list[str]] = {}
    last: dict[str, list[int]] = {}
    consistent = 0
    for r, u in enumerate(users):
        items = seq[r, : length[r]].tolist()
        if u not in history:
            history[u] = [tokens[i] for i in items]
        elif last[u][-len(items) :] == items:
            consistent += 1
        last[u] = items + [int(target[r])]
    rest = len(users) - len(history)
    return history, consistent / rest if rest else 1.0


def target_ranks(logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """0-based rank of each row's target among ``logits`` ``[B, n_items]``, the padding column left out."""
    logits = logits.clone()
    logits[:, 0] = -torch.inf
    return metrics.target_rank(logits, target).numpy()


def offline_ranks(editor: AdapterEditor, seq: torch.Tensor, length: torch.Tensor,
                  target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each row's target rank by the static base model and by the ``served`` method (the adapter's edit)."""
    base, static, served = editor.base, [], []
    with torch.inference_mode():
        for lo in range(0, len(seq), BATCH):
            s, n, t = seq[lo : lo + BATCH], length[lo : lo + BATCH], target[lo : lo + BATCH]
            static.append(target_ranks(base.score(s, n), t))
            out = served_edit(base, editor.adapter, editor.bank, editor.code_table, s, n, editor.context)
            served.append(target_ranks(edited_logits(base, out.state, out.edit), t))
    return np.concatenate(static), np.concatenate(served)


def distilled_ranks(ckpt: Path, teachers: Sequence[Path], cfg: DistillConfig, base: EditableSeqRec,
                    seq: torch.Tensor, length: torch.Tensor, target: torch.Tensor) -> np.ndarray:  # fmt: skip
    """Each row's target rank with its offline distilled edit as the served cloud solves it
    (:class:`DistilledEditor`: the ``teachers`` checkpoints and the checkpoint's item delta, which the device
    scores with once it holds the bank)."""
    editor = DistilledEditor.load(ckpt, teachers, cfg)
    out = []
    for lo in tqdm(range(0, len(seq), BATCH), desc="offline distilled edits", leave=False):
        s, n, t = seq[lo : lo + BATCH], length[lo : lo + BATCH], target[lo : lo + BATCH]
        edit = editor.solve(s, n)
        with torch.no_grad():
            out.append(target_ranks(base.logits(base.head(base.user_state(s, n), edit), editor.items), t))
    return np.concatenate(out)


def load_rows(cfg: PersonaConfig, ckpt: Path, share: float, seed: int, teachers: Sequence[Path] | None = None,
              distill: DistillConfig | None = None) -> Rows:  # fmt: skip
    """The test rows of ``share`` of ``cfg.dataset``'s test users (seeded by ``seed``) with their offline ranks
    under the checkpoint ``ckpt``'s adapter + bank; with ``teachers``, the distilled edit's too (``distill``)."""
    split = load_dataset_split(cfg)
    test = split.eval_rows("test")
    uid = test["user_id"].numpy()
    idx = chosen_rows(uid, test["timestamp"].numpy(), share, seed)
    seq, length, target = test["item_id_list"][idx], test["item_length"][idx], test["item_id"][idx]
    tokens = [str(t) for t in split.item_tokens]
    users = [str(int(u)) for u in uid[idx]]
    history, consistent = first_histories(users, seq, length, target, tokens)
    editor = load_editor(ckpt, 0, run_layout.adapter_dir(ckpt))
    if not isinstance(editor, AdapterEditor):
        raise FileNotFoundError(f"{run_layout.adapter_dir(ckpt)} has no trained adapter + bank: run `make run` first")
    static, served = offline_ranks(editor, seq, length, target)
    distilled = None
    if teachers is not None:
        distilled = distilled_ranks(ckpt, teachers, distill or DistillConfig(), editor.base, seq, length, target)
    return Rows(users, [tokens[int(i)] for i in target], history, static, served, distilled, cfg.dataset,
                len(history), consistent)  # fmt: skip


# ---------------------------------------------------------------- scoring


def served_rank(items: Sequence[str], target: str, k: int = K) -> int:
    """The target's 0-based rank in a served top-``k`` list (``k``: not in it)."""
    return list(items[:k]).index(target) if target in items[:k] else k


def metrics_of(ranks: np.ndarray | Sequence[int], k: int = K) -> dict[str, float]:
    """Mean NDCG / HR / MRR @``k`` over rows, from their 0-based target ranks (:func:`recsys.metrics.per_ranks`)."""
    return {key: float(v.mean()) for key, v in metrics.per_ranks(torch.as_tensor(np.asarray(ranks)), k).items()}


def adaptation_shares(kinds: Sequence[str]) -> dict[str, float]:
    """Share of the rankings by the adaptation they were served with (``error``: no ranking)."""
    return {kind: round(list(kinds).count(kind) / len(kinds), 4) for kind in ("cloud-edit", "prototype-cache",
                                                                                "base", "error")}  # fmt: skip


def row_by_row(replayed: Sequence[int], offline: np.ndarray, k: int = K) -> dict:
    """A replayed condition against its offline method on the same rows: NDCG@k difference (mean, paired
    standard error) and the rows whose target got the same rank (within the top ``k``; ``k`` = outside)."""
    replayed, offline = np.asarray(replayed), np.minimum(offline, k)
    d = (metrics.ndcg(torch.as_tensor(replayed), k) - metrics.ndcg(torch.as_tensor(offline), k)).numpy()
    same = replayed == offline
    return {"ndcg_diff": float(d.mean()), "ndcg_diff_se": float(d.std(ddof=1) / math.sqrt(len(d))),
            "same_rank": float(same.mean()), "same_rows": int(same.sum()), "rows": len(d)}  # fmt: skip


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` over seeds (the sample standard deviation; 0 for one seed), 4 decimals."""
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def summarise(per_seed: list[dict], names: Sequence[str]) -> dict:
    """Each condition's numbers (:data:`SUMMARY_KEYS` and the adaptation shares) as lists over the seeds that
    ran it."""
    out = {}
    for name in names:
        runs = [s["conditions"][name] for s in per_seed if name in s["conditions"]]
        out[name] = {key: [r[key] for r in runs] for key in SUMMARY_KEYS}
        out[name]["adaptation"] = {k: [r["adaptation"][k] for r in runs] for k in runs[0]["adaptation"]}
    return out
