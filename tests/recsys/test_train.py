"""recsys.train: the all-position training windows, the per-position loss, and a real (tiny) base-model fit."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recsys.config import ModelConfig, load_config
from recsys.evaluate import evaluate_rows, model_score_fn
from recsys.loop import seed_everything
from recsys.models import EditableSeqRec
from recsys.train import loop_settings, make_windows, next_item_loss, train_model


def test_windows_cover_every_target_once():
    seq = torch.arange(1, 31).numpy()
    x, y = make_windows([seq], max_len=8)
    targets = sorted(int(t) for t in y[y > 0])
    assert targets == list(range(2, 31))
    for xi, yi in zip(x, y):  # each target's input is the item right before it
        n = int((yi > 0).sum())
        assert torch.equal(yi[:n], xi[:n] + 1)


def test_windows_keep_the_most_recent_items_in_full_context():
    x, y = make_windows([np.arange(1, 12), np.array([5, 6])], max_len=4)
    assert x[0].tolist() == [7, 8, 9, 10] and y[0].tolist() == [8, 9, 10, 11]  # the end of the sequence, whole
    assert x[-1].tolist() == [5, 0, 0, 0] and y[-1].tolist() == [6, 0, 0, 0]  # right-padded


def test_next_item_loss_is_the_mean_cross_entropy_per_target():
    torch.manual_seed(0)
    model = EditableSeqRec("sasrec", ModelConfig(hidden_size=16, inner_size=32, item_side="none"), 30, 6).eval()
    x, y = make_windows([np.arange(1, 9), np.array([3, 4, 5])], max_len=6)
    by_hand = []
    for xi, yi in zip(x, y):
        n = int((yi > 0).sum())
        logits = model.logits(model.head(model.position_states(xi[None, :n])[0]), model.item_embeddings)
        by_hand.append(torch.nn.functional.cross_entropy(logits, yi[:n], reduction="sum"))
    with torch.no_grad():
        got = next_item_loss(model, x, y)
    torch.testing.assert_close(got, torch.stack(by_hand).sum() / 9, rtol=1e-4, atol=1e-5)


def test_loop_settings_carry_the_train_section_and_the_validation_metric():
    cfg = load_config(overrides=["train.epochs=3", "train.bucket_batches=4", "eval.valid_metric=hit@10"])
    s = loop_settings(cfg)
    assert (s.epochs, s.bucket_batches, s.valid_metric, s.batch_size) == (3, 4, "hit@10", cfg.train.batch_size)


def test_a_tiny_sasrec_fit_returns_its_best_epoch_and_learns(ml100k_split):
    """Two epochs on 100 users' training sequences; validation on 1,000 rows (a smaller split of the real one)."""
    base_cfg, split = ml100k_split
    small = dataclasses.replace(split, train_sequences=split.train_sequences[:100],
                                valid=SimpleNamespace(inter_feat=split.eval_rows("valid")[:1000]))
    cfg = load_config(overrides=[f"data.workdir={base_cfg.data.workdir}", "train.epochs=2", "train.patience=5",
                                 "model_params.item_side=none", "model_params.hidden_size=16",
                                 "model_params.inner_size=32", "train.threads=2"])
    rows = small.eval_rows("valid")
    seed_everything(0)
    untrained = EditableSeqRec(cfg.model, cfg.model_params, split.n_items, cfg.data.max_seq_len)
    before = evaluate_rows(model_score_fn(untrained), rows, split.config, 500)
    result = train_model(small, cfg, seed=0, progress=False)
    assert len(result.history) == 2 and result.best_epoch in (0, 1) and not result.model.training
    after = evaluate_rows(model_score_fn(result.model), rows, split.config, 500)
    assert after["ndcg@10"] == pytest.approx(result.best_valid["ndcg@10"], abs=1e-6)  # the kept epoch's weights
    assert after["ndcg@10"] > before["ndcg@10"]
