"""Per-row ranking metrics of a single target: NDCG@k, HR@k, MRR@k from the target's rank.

RecBole's evaluator (:func:`recsys.evaluate.evaluate_rows`) gives the means over rows; simulations that
decide per row (request policies, stale edits) need each row's value. ``rank`` is 0-based: the number of
items scoring strictly higher than the target (the padding column is ``-inf``), which is RecBole's
full-ranking position whenever scores do not tie with the target's (tests check the means agree).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

KEYS = ("ndcg", "hit", "mrr")


def target_rank(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[B]`` 0-based rank of each row's target among ``scores`` ``[B, n_items]``."""
    return (scores > scores.gather(1, targets.view(-1, 1).long())).sum(1)


def ndcg(rank: torch.Tensor, k: int = 10) -> torch.Tensor:
    return torch.where(rank < k, 1.0 / torch.log2(rank.double() + 2), torch.zeros((), dtype=torch.float64))


def hit(rank: torch.Tensor, k: int = 10) -> torch.Tensor:
    return (rank < k).double()


def mrr(rank: torch.Tensor, k: int = 10) -> torch.Tensor:
    return torch.where(rank < k, 1.0 / (rank.double() + 1), torch.zeros((), dtype=torch.float64))


def per_ranks(rank: torch.Tensor, k: int = 10) -> dict[str, torch.Tensor]:
    """``{"ndcg@k": [B], "hit@k": [B], "mrr@k": [B]}`` float64 per row, from 0-based target ranks."""
    return {f"{name}@{k}": fn(rank, k) for name, fn in zip(KEYS, (ndcg, hit, mrr))}


def per_row(scores: torch.Tensor, targets: torch.Tensor, k: int = 10) -> dict[str, torch.Tensor]:
    """:func:`per_ranks` of ``scores`` ``[B, n_items]`` for ``targets`` ``[B]``."""
    return per_ranks(target_rank(scores, targets), k)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney), ties counted half; ``nan`` without both classes."""
    labels = np.asarray(labels)
    pos, neg = labels.sum(), len(labels) - labels.sum()
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))
