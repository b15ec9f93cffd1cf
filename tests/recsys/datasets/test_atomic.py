"""recsys.datasets.atomic: RecBole atomic files written atomically and read back (items, timestamped item text
up to a cutoff, side arrays, counts), and what a dataset must hold to be written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys.config import MANIFEST
from recsys.datasets.atomic import FORMAT, AtomicDataset, counts, is_complete, read_arrays, read_items, write_atomic


def _dataset(**kw) -> AtomicDataset:
    inter = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2", "u2"], "item_id": ["a", "b", "a", "c", "b"],
                          "timestamp": [1.0, 2.0, 1.0, 5.0, 6.0]})
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["Alpha\tone", "  Beta   two ", None]})
    events = pd.DataFrame({"item_id": ["a", "a", "b", "a"], "field": "tags",
                           "value": ["funny", "dark", "Long\tfilm", "funny"], "timestamp": [3.0, 10.0, 4.0, 1.0]})
    return AtomicDataset("toy", inter, items, {"image_features": np.eye(3, 4)}, events, **kw)


def test_round_trip_of_interactions_items_arrays_and_counts(tmp_path):
    out = write_atomic(_dataset(), tmp_path / "toy", {"protocol": "shift"})
    assert is_complete(out) and is_complete(out, current=True) and (out / ".complete").read_text() == FORMAT + "\n"
    assert counts(out, "toy") == (2, 3, 5)
    items = read_items(out, "toy")
    assert list(items.columns) == ["item_id", "title", "tags"]
    assert list(items["title"]) == ["Alpha one", "Beta two", ""]  # tabs and runs of blanks cleaned, None → ""
    np.testing.assert_array_equal(read_arrays(out)["image_features"], np.eye(3, 4, dtype=np.float32))
    header = (out / "toy.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\ttimestamp:float"
    assert json.loads((out / MANIFEST).read_text()) == {"protocol": "shift"}


def test_timestamped_item_text_is_joined_in_time_order_up_to_the_cutoff(tmp_path):
    out = write_atomic(_dataset(), tmp_path / "toy")
    every = read_items(out, "toy").set_index("item_id")["tags"]
    assert every.to_dict() == {"a": "funny, dark", "b": "Long film", "c": ""}  # a repeated value once, first time
    early = read_items(out, "toy", cutoff=3.5).set_index("item_id")["tags"]
    assert early.to_dict() == {"a": "funny", "b": "", "c": ""}


def test_rewriting_replaces_the_directory_whole(tmp_path):
    out = write_atomic(_dataset(), tmp_path / "toy")
    (out / "stale.npy").write_bytes(b"x")
    smaller = _dataset()
    smaller.arrays = {}
    write_atomic(smaller, out)
    assert read_arrays(out) == {} and sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


@pytest.mark.parametrize(("change", "message"), [
    ({"items": pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"]})}, "1 interacted items have no .item row"),
    ({"arrays": {"text_features": np.ones((2, 4))}}, "array text_features has 2 rows for 3 items"),
])
def test_an_inconsistent_dataset_is_refused_and_nothing_is_left_behind(tmp_path, change, message):
    ds = _dataset()
    for key, value in change.items():
        setattr(ds, key, value)
    with pytest.raises(ValueError, match=message):
        write_atomic(ds, tmp_path / "toy")
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_or_old_format_directory_is_not_current(tmp_path):
    assert not is_complete(tmp_path)
    (tmp_path / ".complete").write_text("format 1\n")
    assert is_complete(tmp_path) and not is_complete(tmp_path, current=True)
    with pytest.raises(FileNotFoundError, match="missing item file"):
        read_items(tmp_path, "toy")
