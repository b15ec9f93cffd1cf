"""Per-row metrics agree with RecBole's evaluator (which rounds to 4 decimals) on real full rankings."""

from __future__ import annotations

import numpy as np
import torch

from recsys import metrics
from recsys.evaluate import evaluate_rows, popularity_score_fn

ROUNDING = 0.5e-4 + 1e-9  # RecBole's metric_decimal_place = 4


def test_per_row_means_equal_recbole(ml100k_split):
    _, split = ml100k_split
    rows = split.eval_rows("test")[:2000]
    g = torch.Generator().manual_seed(0)
    table = torch.randn(split.n_items, 8, generator=g)

    def score(batch):  # a deterministic, tie-free scorer that depends on the history
        scores = table[batch["item_id_list"]].sum(1) @ table.T
        scores[:, 0] = float("-inf")
        return scores

    ours = metrics.per_row(score(rows), rows["item_id"])
    theirs = evaluate_rows(score, rows, split.config, 500)
    for key in ("ndcg@10", "hit@10", "mrr@10"):
        assert abs(float(ours[key].mean()) - theirs[key]) <= ROUNDING, key
    assert float(ours["hit@10"].mean()) > 0  # the check is not vacuous


def test_rank_and_values_by_hand():
    scores = torch.tensor([[float("-inf"), 3.0, 2.0, 1.0], [float("-inf"), 0.0, 5.0, 1.0]])
    rank = metrics.target_rank(scores, torch.tensor([2, 1]))
    assert rank.tolist() == [1, 2]
    assert np.allclose(metrics.ndcg(rank, 2).numpy(), [1 / np.log2(3), 0.0])
    assert metrics.hit(rank, 3).tolist() == [1.0, 1.0]
    assert np.allclose(metrics.mrr(rank, 10).numpy(), [0.5, 1 / 3])


def test_popularity_has_no_ties_with_the_target(ml100k_split):
    _, split = ml100k_split
    rows = split.eval_rows("test")[:500]
    fn = popularity_score_fn(split.train_counts)
    scores = fn(rows).clone()
    scores[:, 0] = float("-inf")
    ours = metrics.per_row(scores, rows["item_id"])
    assert abs(float(ours["ndcg@10"].mean()) - evaluate_rows(fn, rows, split.config, 500)["ndcg@10"]) <= ROUNDING
