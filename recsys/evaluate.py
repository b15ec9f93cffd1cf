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


def evaluate_rows(
    score_fn: ScoreFn, rows: Interaction, recbole_config, batch_size: int, device: str = "cpu",
    by_length: bool = False,
) -> dict[str, float]:
    """RecBole full-ranking metrics of ``score_fn`` over ``rows`` (fields item_id_list/item_length/item_id).

    ``score_fn`` sees each batch on ``device``; RecBole's collector takes the top-k there and keeps
    its results on the CPU. ``by_length`` feeds the rows in order of history length, so each batch's
    padding (which the models drop) is short; the metrics are means over rows and do not change.
    Leave it off when ``score_fn`` records something per row in row order.
    """
    collector = Collector(recbole_config)
    evaluator = Evaluator(recbole_config)
    order = torch.argsort(rows["item_length"], stable=True) if by_length else None
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size] if order is None else rows[order[start : start + batch_size]]
            if device != "cpu":
                batch = batch.to(device)
            scores = score_fn(batch).float().clone()
            scores[:, 0] = float("-inf")
            positive_u = torch.arange(len(batch), device=scores.device)
            collector.eval_batch_collect(scores, batch, positive_u, batch["item_id"].to(scores.device))
    return {k: float(v) for k, v in evaluator.evaluate(collector.get_data_struct()).items()}


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
