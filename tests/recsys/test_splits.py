"""recsys.splits: RecBole's splits under both protocols, and the split sizes reported from them."""

from __future__ import annotations

import torch

from recsys.splits import split_sizes


def test_shift_protocol_is_a_global_temporal_split(ml100k_split):
    _, split = ml100k_split
    valid, test = split.eval_rows("valid"), split.eval_rows("test")
    assert (len(valid), len(test)) == (9905, 19811)  # RecBole's RS [0.7, 0.1, 0.2] on 99,057 rows
    n_train_targets = sum(len(s) - 1 for s in split.train_sequences)
    assert n_train_targets == 69_341
    assert float(valid["timestamp"].min()) >= 0
    assert float(test["timestamp"].min()) >= float(valid["timestamp"].max()) - 1e-3 * abs(
        float(valid["timestamp"].max())
    )
    # each test row keeps the user's full prior history (capped at 50), the device's real-time data
    assert int(test["item_length"].max()) == 50
    assert split.train_counts.sum() == n_train_targets + len(split.train_sequences)


def test_order_protocol_is_leave_one_out(scientific_split):
    _, split = scientific_split
    valid, test = split.eval_rows("valid"), split.eval_rows("test")
    assert len(valid) == len(test) == 2928  # one row per user each
    assert torch.equal(test["item_length"], valid["item_length"] + 1)
    assert torch.equal(test["item_id_list"][torch.arange(len(test)), valid["item_length"]], valid["item_id"])


def test_split_sizes_count_rows_and_their_users(ml100k_split):
    _, split = ml100k_split
    sizes = split_sizes(split)
    assert sizes["train"] == (69_341, len(split.train_sequences))
    assert [sizes[p][0] for p in ("valid", "test")] == [9905, 19811]
    for part in ("valid", "test"):
        users = split.eval_rows(part)[split.config["USER_ID_FIELD"]]
        assert sizes[part][1] == len(torch.unique(users)) <= 943


def test_the_shift_cutoff_is_the_last_training_time_and_the_item_tokens_start_at_padding(ml100k_split):
    _, split = ml100k_split
    assert split.protocol == "shift" and split.train_cutoff is not None
    assert split.train_cutoff <= float(split.eval_rows("valid")["timestamp"].min())
    assert split.item_tokens[0] == "[PAD]" and len(split.item_tokens) == split.n_items == len(split.train_counts)
