"""The OOD score shared by the bank and the device (recsys.ood)."""

from __future__ import annotations

import math

import torch

from recsys import ood


def test_entropy_leaves_out_padding_and_is_log_n_for_a_flat_softmax():
    logits = torch.zeros(2, 11)
    logits[:, 0] = float("-inf")
    logits[1, 3] = 50.0  # all mass on one item
    ent = ood.entropy(logits)
    assert abs(float(ent[0]) - math.log(10)) < 1e-5 and float(ent[1]) < 1e-3


def test_missed_is_a_target_outside_the_top_10():
    logits = torch.arange(20, dtype=torch.float32).repeat(2, 1)  # item 19 best, item 1 worst (0 = padding)
    assert ood.missed(logits, torch.tensor([19, 10])).tolist() == [False, False]  # ranks 0 and 9
    assert ood.missed(logits, torch.tensor([9, 1])).tolist() == [True, True]  # ranks 10 and 18


def test_fit_weights_recovers_which_feature_predicts_the_miss():
    g = torch.Generator().manual_seed(0)
    ent, odds = torch.randn(4000, generator=g) * 2 + 5, torch.randn(4000, generator=g)
    p = torch.sigmoid(1.5 * (ent - 5) - 0.0 * odds)
    miss = torch.rand(4000, generator=g) < p
    we, wp, b = ood.fit_weights(ent, odds, miss)
    assert 1.2 < we < 1.8 and abs(wp) < 0.2 and -9 < b < -6  # ≈ 1.5, 0, −7.5


def test_the_device_score_is_the_weighted_sum_and_picks_each_rows_prototype():
    score = ood.OodScore(w_entropy=2.0, w_proto=0.5, bias=-1.0, proto_logodds=[0.0, 4.0], threshold=9.0)
    got = score.score(torch.tensor([3.0, 3.0]), torch.tensor([0, 1]))
    assert got.tolist() == [5.0, 7.0]
    assert ood.OodScore.model_validate_json(score.model_dump_json()) == score
