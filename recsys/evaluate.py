"""Full-ranking evaluation with RecBole's own Collector and Evaluator.

Every evaluation row is scored over the whole catalogue (padding id masked), exactly as RecBole's
``Trainer.evaluate`` does for sequential models in ``full`` mode; rows are independent, so metrics
do not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.evaluator import Collector, Evaluator

import recsys  # noqa: F401
from recsys.models import EditableSeqRec, HeadEdit, score_with_edit

ScoreFn = Callable[[Interaction], torch.Tensor]
REPORT_KEYS = ["ndcg@5", "ndcg@10", "ndcg@20", "hit@5", "hit@10", "hit@20", "mrr@10"]


HEAD_SHARE = 0.2  # the most popular 20 % of training-period items are the head; the rest the long tail
SLICES = ["new", "seen", "tail"]  # target_slices' keys, in report order
SLICE_KEYS = ["ndcg@10", "hit@10"]  # the metrics the slice tables show


def target_slices(targets: torch.Tensor, train_counts: np.ndarray) -> dict[str, torch.Tensor]:
    """Row masks of the targets that are ``new`` items (no training-period interaction), ``seen`` items
    (the rest) and ``tail`` items (seen, outside the top :data:`HEAD_SHARE` of seen items by training
    popularity)."""
    counts = torch.as_tensor(np.asarray(train_counts), dtype=torch.float64)
    seen = counts > 0
    seen[0] = False
    n_head = int(np.ceil(HEAD_SHARE * int(seen.sum())))
    head = torch.zeros_like(seen)
    if n_head:
        order = torch.argsort(torch.where(seen, counts, torch.tensor(-1.0, dtype=counts.dtype)), descending=True,
                              stable=True)
        head[order[:n_head]] = True
    t = targets.long().cpu()
    return {"new": ~seen[t], "seen": seen[t], "tail": (seen & ~head)[t]}


def evaluate_rows(
    score_fn: ScoreFn, rows: Interaction, recbole_config, batch_size: int, device: str = "cpu",
    by_length: bool = False, train_counts: np.ndarray | None = None,
) -> dict[str, float]:
    """RecBole full-ranking metrics of ``score_fn`` over ``rows`` (fields item_id_list/item_length/item_id).

    ``score_fn`` sees each batch on ``device``; RecBole's collector takes the top-k there and keeps
    its results on the CPU. ``by_length`` feeds the rows in order of history length, so each batch's
    padding (which the models drop) is short; the metrics are means over rows and do not change.
    Leave it off when ``score_fn`` records something per row in row order. With ``train_counts``
    (training-period interactions per item) the same scores also give the metrics of the
    :func:`target_slices` (keys ``new/ndcg@10``, ``tail/hit@10``, ...; row counts ``new/rows``, ``tail/rows``).
    """
    slices = target_slices(rows["item_id"], train_counts) if train_counts is not None else {}
    collectors = {name: Collector(recbole_config) for name in ["all", *slices]}
    evaluator = Evaluator(recbole_config)
    order = torch.argsort(rows["item_length"], stable=True) if by_length else None
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            idx = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            batch = rows[idx]
            if device != "cpu":
                batch = batch.to(device)
            scores = score_fn(batch).float().clone()
            scores[:, 0] = float("-inf")
            for name, collector in collectors.items():
                sub, sub_scores = batch, scores
                if name != "all":  # the slice's rows of this batch
                    sel = torch.nonzero(slices[name][idx]).view(-1).to(scores.device)
                    if len(sel) == 0:
                        continue
                    sub, sub_scores = batch[sel], scores[sel]
                positive_u = torch.arange(len(sub_scores), device=scores.device)
                collector.eval_batch_collect(sub_scores, sub, positive_u, sub["item_id"].to(scores.device))
    out = {k: float(v) for k, v in evaluator.evaluate(collectors["all"].get_data_struct()).items()}
    for name, mask in slices.items():
        out[f"{name}/rows"] = float(mask.sum())
        if mask.any():
            metrics = evaluator.evaluate(collectors[name].get_data_struct())
            out.update({f"{name}/{k}": float(v) for k, v in metrics.items()})
    return out


def model_score_fn(model: EditableSeqRec, edit_fn: Callable[[Interaction], HeadEdit | None] | None = None) -> ScoreFn:
    """Scores of ``model`` (optionally with a per-batch head edit) for RecBole rows."""

    def fn(batch: Interaction) -> torch.Tensor:
        edit = edit_fn(batch) if edit_fn is not None else None
        return score_with_edit(model, batch["item_id_list"], batch["item_length"], edit)

    return fn


def popularity_score_fn(train_counts: np.ndarray) -> ScoreFn:
    """Training-period popularity; ties broken by item id so the ranking is strict and reproducible."""
    order = np.lexsort((np.arange(len(train_counts)), -train_counts))
    strict = np.empty(len(train_counts), dtype=np.float32)
    strict[order] = np.arange(len(train_counts), 0, -1, dtype=np.float32)
    row = torch.from_numpy(strict)

    def fn(batch: Interaction) -> torch.Tensor:
        return row.unsqueeze(0).expand(len(batch), -1)

    return fn


def summarize(runs: list[dict[str, float]], keys: list[str] = REPORT_KEYS) -> dict[str, tuple[float, float]]:
    """Mean and (population) std over seeds for each metric."""
    return {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))) for k in keys}
