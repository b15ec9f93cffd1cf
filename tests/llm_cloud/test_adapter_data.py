"""llm_cloud.adapter_data: one adapter sample per training target (window, frozen state, next items), the inputs of
RecBole rows, and their semantic codes; on the tiny base the adapter tests share."""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.interaction import Interaction

from llm_cloud.adapter_data import batch_from_rows, code_lookup, row_states, training_samples
from tests.llm_cloud.test_adapter import N_ITEMS, _base

SEQS = [np.array([3, 7, 9, 11, 2, 5, 8, 13]), np.array([4, 6, 10, 12, 1])]


def _state(base, prefix) -> torch.Tensor:
    return base.user_state(torch.tensor([list(prefix)]), torch.tensor([len(prefix)]))[0]


def test_one_sample_per_training_target_with_the_window_before_it_and_the_next_items():
    base = _base()
    samples = training_samples(base, SEQS, n_window=3, n_future=2)
    assert len(samples) == sum(len(s) - 1 for s in SEQS) == 11
    expected = [(s[max(0, j - 3) : j], s[j : j + 2]) for s in SEQS for j in range(1, len(s))]
    for i, (window, nxt) in enumerate(expected):
        assert samples.window[i].tolist() == [0] * (3 - len(window)) + window.tolist()  # left-padded
        assert samples.targets[i].tolist() == nxt.tolist() + [0] * (2 - len(nxt))  # 0 past the sequence's end
    prefixes = [s[:j] for s in SEQS for j in range(1, len(s))]
    for i, prefix in enumerate(prefixes):  # the frozen base's state after each prefix
        torch.testing.assert_close(samples.state[i], _state(base, prefix), atol=1e-5, rtol=1e-4)


def test_a_subset_keeps_time_order_and_batches_carry_codes():
    samples = training_samples(_base(), SEQS, n_window=3, n_future=1)
    assert samples.subset(None, 0) is samples and samples.subset(100, 0) is samples
    part = samples.subset(5, seed=0)
    rows = [samples.window.tolist().index(w) for w in part.window.tolist()]
    assert len(part) == 5 and rows == sorted(rows)
    codes = torch.arange(N_ITEMS).view(-1, 1).repeat(1, 2) + 1
    codes[0] = 0  # padding has no code
    batch = samples.batch(torch.tensor([0, 3]), codes)
    assert batch.codes.shape == (2, 3, 2) and torch.equal(batch.codes[..., 0], code_lookup(batch.window, codes)[..., 0])
    assert batch.codes[0, 0].tolist() == [0, 0] and batch.context is None
    assert torch.equal(batch.targets, samples.targets[[0, 3]])


def test_recbole_rows_give_the_same_inputs_as_the_training_samples():
    base = _base()
    samples = training_samples(base, SEQS, n_window=3, n_future=1)
    seq = torch.zeros(2, 10, dtype=torch.long)
    seq[0, :5], seq[1, :3] = torch.from_numpy(SEQS[0][:5]), torch.from_numpy(SEQS[1][:3])
    rows = Interaction({"item_id_list": seq, "item_length": torch.tensor([5, 3]),
                        "item_id": torch.tensor([int(SEQS[0][5]), int(SEQS[1][3])])})
    batch = batch_from_rows(base, rows, 3, None)
    assert batch.codes is None and torch.equal(batch.window, samples.window[[4, 9]])
    torch.testing.assert_close(batch.state, samples.state[[4, 9]], atol=1e-5, rtol=1e-4)
    states, nxt = row_states(base, rows, batch=1)
    torch.testing.assert_close(states, batch.state)
    assert nxt.tolist() == samples.targets[[4, 9], 0].tolist()
