"""recsys.datasets.converters: each raw format to an AtomicDataset (ml-100k from its raw files and from the copy in
the recbole wheel; a user's CSV) and the protocol read from a CSV's timestamps."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys.datasets import _embedded_dir
from recsys.datasets.converters import CONVERTERS, detect_protocol, from_user_csv, ml_100k, ml_100k_embedded
from recsys.datasets.registry import load_registry


def _events(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype({"timestamp": float})


@pytest.mark.parametrize(
    "rows, protocol, why",
    [
        ([("a", "x", 0), ("a", "y", 1), ("b", "x", 0), ("b", "z", 1), ("b", "y", 2)], "order", "exactly 0..n-1"),
        ([("a", "x", 1), ("a", "y", 2), ("b", "x", 1)], "order", "exactly 1..n"),
        ([("a", "x", 2), ("a", "y", 0), ("b", "x", 0), ("b", "z", 5)], "order", "counted from 0, with gaps"),
        ([("a", "x", 1.7e9), ("a", "y", 1.7e9 + 60), ("b", "x", 1.7e9 + 5)], "shift", "different timestamps"),
        ([("a", "x", 0), ("a", "y", 1), ("b", "x", 1), ("b", "y", 2)], "shift", "different timestamps"),  # 0 and 1
        ([("a", "x", 0), ("a", "y", 0), ("b", "x", 0)], "shift", "two events at one timestamp"),
        ([("a", "x", 0), ("a", "y", 0.5), ("b", "x", 0)], "shift", "not whole numbers"),
    ],
)
def test_detect_protocol_rule(rows, protocol, why):
    found, reason = detect_protocol(_events(rows))
    assert found == protocol and why in reason


def test_every_registered_dataset_has_a_converter():
    assert set(CONVERTERS) == set(load_registry())


def test_ml_100k_raw_files_give_titles_without_the_year_genres_and_release_year(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t20\t3\t891717742\n1\t20\t4\t881250950\n")
    (tmp_path / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    (tmp_path / "u.item").write_text("10|Heat (1995)|01-Jan-1995||http://x|0|1|0\n"
                                     "20|Toy Story (1995)|01-Jan-1995||http://y|0|0|1\n")
    ds = ml_100k(tmp_path)
    ds.validate()
    assert ds.name == "ml-100k" and list(ds.inter.columns) == ["user_id", "item_id", "timestamp"]
    assert ds.inter["timestamp"].tolist() == [881250949.0, 891717742.0, 881250950.0]
    assert ds.items.to_dict("records") == [
        {"item_id": "10", "title": "Heat", "genres": "Action", "release_year": "1995"},
        {"item_id": "20", "title": "Toy Story", "genres": "Comedy", "release_year": "1995"},
    ]


def test_ml_100k_from_the_recbole_wheel():
    ds = ml_100k_embedded(_embedded_dir(load_registry()["ml-100k"].embedded))
    ds.validate()
    assert len(ds.inter) == 100_000 and len(ds.items) == 1682
    assert ds.items["title"].iloc[0] == "Toy Story" and "Animation" in ds.items["genres"].iloc[0]


def test_user_csv_text_columns_keep_the_first_non_empty_value_per_item(tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text(" USER ,item,Timestamp,brand,notes\nu1,a,1,,first\nu1,b,2,Y,\nu2,a,3,X,second\n")
    ds = from_user_csv(csv, "mine")
    assert ds.items.to_dict("records") == [{"item_id": "a", "title": "a", "brand": "X", "notes": "first"},
                                           {"item_id": "b", "title": "b", "brand": "Y", "notes": ""}]
    only = from_user_csv(csv, "mine", text_columns=["notes"])
    assert list(only.items.columns) == ["item_id", "title", "notes"]
