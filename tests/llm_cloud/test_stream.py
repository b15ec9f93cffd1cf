"""The event stream: RecBole's shift-protocol rows are events in time order, each after its user's previous."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_cloud.stream import StreamRows, last_position_targets, prefix_windows


def test_real_rows_are_events_in_time_order(ml100k_split):
    cfg, split = ml100k_split
    uid, tf = split.config["USER_ID_FIELD"], split.config["TIME_FIELD"]
    valid = StreamRows.from_rows(split.eval_rows("valid"), uid, tf)
    test = StreamRows.from_rows(split.eval_rows("test"), uid, tf)
    stream = StreamRows.concat([valid, test])
    prev = stream.previous()
    rows = np.flatnonzero(prev >= 0)[:3000]
    last_item = stream.seq[rows, stream.length[rows] - 1]
    assert torch.equal(last_item, stream.target[prev[rows]])  # a row's history ends with its user's previous event
    t = float(stream.time[len(valid)])
    assert stream.before(t) <= len(valid) and (stream.time[: stream.before(t)] < t).all()


def test_out_of_order_rows_are_refused():
    with pytest.raises(ValueError, match="time order"):
        ones = torch.ones(2, dtype=torch.long)
        StreamRows(torch.zeros(2, 3, dtype=torch.long), ones, ones, np.array([2.0, 1.0]), np.array([0, 1]))


def test_windows_put_the_event_at_the_last_position():
    seq = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])
    rows = StreamRows(seq, torch.tensor([2, 1]), torch.tensor([9, 8]), np.array([1.0, 2.0]), np.array([0, 0]))
    inputs, targets = rows.windows(np.array([0, 1]))
    assert torch.equal(inputs, seq)
    assert targets.tolist() == [[0, 9, 0, 0], [8, 0, 0, 0]]
    assert torch.equal(last_position_targets(torch.tensor([3]), torch.tensor([4]), 4), torch.tensor([[0, 0, 4, 0]]))


def test_prefix_windows_of_training_sequences():
    seqs = [np.array([1, 2, 3, 4, 5]), np.array([6, 7])]
    inputs, targets = prefix_windows(seqs, 3, np.array([[0, 4], [1, 1], [0, 1]]))
    assert inputs.tolist() == [[2, 3, 4], [6, 0, 0], [1, 0, 0]]
    assert targets.tolist() == [[0, 0, 5], [7, 0, 0], [2, 0, 0]]
