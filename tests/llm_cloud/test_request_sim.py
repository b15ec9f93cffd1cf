"""Request policies over a stream: what the device holds between asks, and each policy's rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_cloud.distill import last_bias_edit
from llm_cloud.request_sim import (
    Detector,
    DeviceView,
    detector_holders,
    holders,
    oracle_asks,
    random_asks,
    training_set,
    user_positions,
)
from recsys import metrics
from recsys.models import score_with_edit
from tests.llm_cloud.test_teacher import N_ITEMS, D, histories, tiny_model


def test_a_row_holds_its_users_last_ask():
    previous = np.array([-1, -1, 0, 1, 2, 4])  # user A: rows 0, 2, 4, 5; user B: rows 1, 3
    asks = np.array([False, True, True, False, False, False])
    assert holders(asks, previous).tolist() == [-1, 1, 2, 1, 2, 2]
    assert holders(asks, previous, ttl=1).tolist() == [-1, 1, 2, 1, 2, -1]  # kept for one more event of A
    assert holders(asks, previous, ttl=0).tolist() == [-1, 1, 2, -1, -1, -1]  # for the asking event only
    assert user_positions(previous).tolist() == [0, 0, 1, 1, 2, 3]


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.2, 0.5, 1.0])
def test_random_and_oracle_ask_at_their_rate(rate):
    assert abs(random_asks(20_000, rate, seed=1).mean() - rate) < 0.01
    gain = np.random.default_rng(0).normal(size=1000)
    asks = oracle_asks(gain, rate)
    assert asks.sum() == round(rate * 1000)
    if 0 < rate < 1:
        assert gain[asks].min() >= gain[~asks].max()  # the largest gains ask


@pytest.fixture(scope="module")
def view():
    model = tiny_model("sasrec", 0)
    seq, length = histories(n=600, seed=4)
    targets = torch.randint(1, N_ITEMS, (600,), generator=torch.Generator().manual_seed(1))
    seen = torch.ones(N_ITEMS, dtype=torch.bool)
    seen[-5:] = False
    return DeviceView.build(model, seq, length, targets, seen, batch=128), seq, length


def stream_shape(n: int = 600, users: int = 40) -> np.ndarray:
    user = np.random.default_rng(2).integers(0, users, n)
    last, previous = {}, np.full(n, -1)
    for i, u in enumerate(user.tolist()):
        previous[i] = last.get(u, -1)
        last[u] = i
    return previous


def test_ranks_are_the_devices_own_with_the_held_edit(view):
    v, seq, length = view
    deltas = torch.randn(len(seq), D, generator=torch.Generator().manual_seed(3)) * 0.3
    alone = metrics.target_rank(score_with_edit(v.model, seq, length), v.targets)
    assert (v.ranks(None) - alone).abs().max() <= 1
    holder = np.where(np.arange(len(seq)) % 3 == 0, np.arange(len(seq)), -1)
    got = v.ranks(deltas, holder)
    expected = score_with_edit(v.model, seq, length, last_bias_edit(deltas, 2, clip=1.0))
    mine = torch.as_tensor(holder >= 0)
    # the same path in batches of another size: scores agree to float rounding, so ranks up to one place
    assert (got[mine] - metrics.target_rank(expected, v.targets)[mine]).abs().max() <= 1
    assert (got[~mine] - alone[~mine]).abs().max() <= 1
    assert (got[mine] != alone[mine]).float().mean() > 0.5  # the edits matter


def test_a_held_list_ranks_first_in_its_order(view):
    v, seq, _ = view
    others = torch.stack([torch.randperm(N_ITEMS - 1, generator=torch.Generator().manual_seed(i))[:12] + 1
                          for i in range(len(seq))])  # fmt: skip
    lists = torch.stack([o[o != t][:10] for o, t in zip(others, v.targets)])
    lists[:, 4] = v.targets  # every row's target sits at position 4 of its row's list, once
    assert v.list_ranks(lists, np.arange(len(seq))).tolist() == [4] * len(seq)
    assert torch.equal(v.list_ranks(lists, np.full(len(seq), -1)), v.ranks(None))


@pytest.mark.parametrize("rate,ttl", [(0.0, None), (0.2, None), (0.5, None), (1.0, None), (0.2, 0)])
def test_the_detector_asks_at_about_its_rate(view, rate, ttl):
    v, seq, _ = view
    previous = stream_shape()
    deltas = torch.randn(len(seq), D, generator=torch.Generator().manual_seed(5)) * 0.5
    x, gain = training_set(v, deltas, previous, ttl)
    assert x.shape == (len(seq), 7) and np.isfinite(x).all()
    detector = Detector.fit(x, gain)
    holder = detector_holders(v, deltas, detector, rate, previous, ttl)
    realised = float(np.mean(holder == np.arange(len(holder))))
    if ttl == 0:
        assert set(holder[holder != np.arange(len(holder))]) <= {-1}  # nothing held past its event
    assert abs(realised - rate) <= 0.1, realised
