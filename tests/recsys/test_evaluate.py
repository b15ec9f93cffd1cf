"""recsys.evaluate: the full-ranking evaluator's invariants, the popularity baseline, the target slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.config import ModelConfig
from recsys.evaluate import evaluate_rows, model_score_fn, popularity_score_fn, summarize, target_slices
from recsys.models import EditableSeqRec


def test_metrics_do_not_depend_on_eval_batch_size(ml100k_split):
    cfg, split = ml100k_split
    torch.manual_seed(0)
    model = EditableSeqRec("sasrec", ModelConfig(hidden_size=16, inner_size=32, item_side="none"), split.n_items, 50)
    rows = split.eval_rows("valid")[:1500]
    a = evaluate_rows(model_score_fn(model), rows, split.config, batch_size=1500)
    b = evaluate_rows(model_score_fn(model), rows, split.config, batch_size=7)
    c = evaluate_rows(model_score_fn(model), rows, split.config, batch_size=256)
    assert a == b == c
    assert set(a) >= {"ndcg@10", "hit@10", "mrr@10"}
    d = evaluate_rows(model_score_fn(model), rows, split.config, batch_size=256, by_length=True)
    assert d.keys() == a.keys()
    for key in a:  # rows fed shortest first (less padding): the same metrics
        assert abs(d[key] - a[key]) < 1e-6, key


def test_popularity_baseline_is_strict_and_above_random(ml100k_split):
    cfg, split = ml100k_split
    rows = split.eval_rows("test")
    pop = evaluate_rows(popularity_score_fn(split.train_counts), rows, split.config, 512)
    assert 0.012 < pop["ndcg@10"] < 0.03  # facts.md: 0.0191 on this split
    scores = popularity_score_fn(split.train_counts)(rows[:2])
    assert len(torch.unique(scores[0])) == split.n_items  # no ties
    top = int(torch.argmax(scores[0]))
    assert split.train_counts[top] == np.max(split.train_counts)


def test_target_slices_new_seen_and_tail():
    counts = np.array([0, 50, 40, 30, 20, 10, 5, 4, 3, 2, 1, 0, 0], dtype=float)  # 10 seen, 2 new
    masks = target_slices(torch.tensor([1, 2, 3, 11, 12, 10]), counts)
    assert masks["new"].tolist() == [False, False, False, True, True, False]
    assert masks["seen"].tolist() == [True, True, True, False, False, True]
    assert masks["tail"].tolist() == [False, False, True, False, False, True]  # head = top 2 of 10 seen


def test_slice_metrics_come_with_the_same_overall_metrics(ml100k_split):
    _, split = ml100k_split
    rows = split.eval_rows("test")[:2000]
    score_fn = popularity_score_fn(split.train_counts)
    plain = evaluate_rows(score_fn, rows, split.config, 500)
    sliced = evaluate_rows(score_fn, rows, split.config, 500, train_counts=split.train_counts)
    assert {k: sliced[k] for k in plain} == plain
    assert sliced["new/rows"] + sliced["seen/rows"] == len(rows) and 0 < sliced["tail/rows"] < sliced["seen/rows"]
    assert sliced["tail/ndcg@10"] < plain["ndcg@10"]  # popularity ranks the long tail low


def test_a_head_edit_per_batch_reaches_the_scores(ml100k_split):
    from recsys.models import HeadEdit

    _, split = ml100k_split
    torch.manual_seed(0)
    model = EditableSeqRec("sasrec", ModelConfig(hidden_size=16, inner_size=32, item_side="none"), split.n_items, 50)
    rows = split.eval_rows("valid")[:64]
    dim, layers = model.head.dim, len(model.head.layers)
    zero = HeadEdit([torch.zeros(dim, dim)] * layers, [torch.zeros(dim)] * layers)
    bump = HeadEdit([torch.full((dim, dim), 0.5)] * layers, [torch.full((dim,), 0.5)] * layers)
    base = model_score_fn(model)(rows)
    assert torch.equal(model_score_fn(model, lambda batch: zero)(rows), base)
    assert not torch.allclose(model_score_fn(model, lambda batch: bump)(rows), base)


def test_summarize_is_mean_and_population_std_over_seeds():
    runs = [{"ndcg@10": 0.1, "hit@10": 0.3}, {"ndcg@10": 0.3, "hit@10": 0.3}]
    assert summarize(runs, ["ndcg@10", "hit@10"]) == {"ndcg@10": (pytest.approx(0.2), pytest.approx(0.1)),
                                                      "hit@10": (pytest.approx(0.3), 0.0)}
