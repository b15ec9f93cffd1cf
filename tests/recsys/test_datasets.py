"""Dataset conversion from the real mirror, the embedded default, a user's CSV (protocol detection, the
recorded manifest, titles) and bad input. The CSVs here are small synthetic files written in tmp dirs."""

from __future__ import annotations

import shutil

import pytest

from recsys.config import DataConfig, layered_dict, read_manifest
from recsys.datasets import (
    CsvFormatError,
    DatasetError,
    import_csv,
    prepare,
    read_arrays,
    read_items,
)
from recsys.datasets.atomic import is_complete
from tests.conftest import needs_mirror

EXPECTED = {  # users, items with interactions, interactions: the provenance README's figures
    "ml-100k": (943, 1682, 100_000),
    "ml-latest-small": (610, 9724, 100_836),
    "amazon-beauty": (22_363, 12_101, 198_502),
    "amazon-scientific": (2928, 1585, 19_712),
}


def _inter(directory, name):
    import pandas as pd

    return pd.read_csv(directory / f"{name}.inter", sep="\t", dtype=str)


@needs_mirror
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_real_dataset_converts_with_text(name, tmp_path):
    out = prepare(name, DataConfig(workdir=str(tmp_path)))
    assert is_complete(out)
    inter = _inter(out, name)
    users, items, rows = EXPECTED[name]
    assert (inter["user_id:token"].nunique(), inter["item_id:token"].nunique(), len(inter)) == (users, items, rows)
    table = read_items(out, name)
    assert set(inter["item_id:token"]) <= set(table["item_id"])
    assert (table["title"].str.len() > 0).mean() > 0.99
    if name == "amazon-scientific":
        arrays = read_arrays(out)
        assert arrays["image_features"].shape == (len(table), 512)
        assert arrays["text_features"].shape == (len(table), 512)
    if name == "ml-latest-small":
        assert (table["tags"].str.len() > 0).sum() > 1500


def test_ml100k_embedded_default_without_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_DATA_MIRROR", "")
    monkeypatch.setattr("recsys.datasets.default_mirror", lambda: None)
    monkeypatch.setattr("recsys.datasets.registry.default_mirror", lambda: None)
    out = prepare("ml-100k", DataConfig(workdir=str(tmp_path)))
    assert len(_inter(out, "ml-100k")) == 100_000
    assert read_items(out, "ml-100k")["title"].iloc[0] == "Toy Story"
    assert read_manifest(out) is None  # registered datasets: the protocol stays in configs/datasets/
    assert layered_dict(overrides=[f"data.workdir={tmp_path}"])["data"]["protocol"] == "shift"


def test_unknown_dataset_names_it(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'ml-20m'"):
        prepare("ml-20m", DataConfig(workdir=str(tmp_path)))


def test_missing_mirror_is_an_error_even_for_ml100k(tmp_path):
    with pytest.raises(DatasetError, match="data mirror directory not found: .*nowhere"):
        prepare("ml-100k", DataConfig(workdir=str(tmp_path), mirror=str(tmp_path / "nowhere")))


@needs_mirror
def test_corrupt_and_missing_raw_files_are_named(tmp_path):
    from recsys.datasets.registry import default_mirror

    mirror = tmp_path / "mirror"
    shutil.copytree(default_mirror() / "ml-latest-small", mirror / "ml-latest-small")
    ratings = mirror / "ml-latest-small" / "ratings.csv"
    ratings.chmod(0o644)
    with open(ratings, "a") as fh:
        fh.write("1,1,5.0,0\n")
    cfg = DataConfig(workdir=str(tmp_path / "out"), mirror=str(mirror))
    with pytest.raises(DatasetError, match="corrupt file .*ratings.csv"):
        prepare("ml-latest-small", cfg)
    ratings.unlink()
    with pytest.raises(DatasetError, match="missing file .*ratings.csv"):
        prepare("ml-latest-small", cfg)
    assert not (tmp_path / "out" / "ml-latest-small").exists()


def test_user_csv_import(tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text("user,item,timestamp,title,brand\nu1,a,1,Alpha,X\nu1,b,2,Beta,Y\nu2,a,3,,\nu2,c,4,Gamma,Z\n")
    out = import_csv(csv, "mine", DataConfig(workdir=str(tmp_path / "atomic")))
    items = read_items(out, "mine")
    assert list(items["item_id"]) == ["a", "b", "c"] and list(items["title"]) == ["Alpha", "Beta", "Gamma"]
    assert len(_inter(out, "mine")) == 4


@pytest.mark.parametrize(
    "content, message",
    [
        ("user,item\nu1,a\n", "missing column 'timestamp'"),
        ("user,item,timestamp\nu1,a,yesterday\n", "column 'timestamp' line 2: not a number"),
        ("user,item,timestamp\n,a,1\n", "column 'user' line 2: empty value"),
        ("", "empty file"),
        ('user,item,timestamp\nu1,"a,1\n', "not a readable CSV"),
        ("user,item,timestamp\n", "no rows"),
        ("user,item,timestamp\nu1,a,1\nu1,b,inf\n", "line 3: not a number: 'inf'"),
        ("user,item,timestamp,Title,title\nu1,a,1,x,y\n", "column 'title' appears more than once"),
        ("user,item,timestamp\nu1,a,1\nu2,b,2\n", "no user has two or more interactions"),
    ],
)
def test_malformed_csv_is_named(tmp_path, content, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    with pytest.raises(CsvFormatError, match=message):
        import_csv(csv, "bad", DataConfig(workdir=str(tmp_path / "atomic")))
    assert not (tmp_path / "atomic" / "bad").exists()


@needs_mirror
def test_ml_latest_small_tags_after_the_cutoff_stay_out_of_the_item_text(workdir):
    """User tags carry their time: the item text keeps only those known by the training cutoff."""
    import pandas as pd

    out = prepare("ml-latest-small", DataConfig(workdir=str(workdir)))
    events = pd.read_csv(out / "ml-latest-small.item_events", sep="\t", dtype={"item_id": str})
    cutoff = float(events["timestamp"].median())
    late = events[events["timestamp"] > cutoff]
    only_late = set(late["item_id"]) - set(events[events["timestamp"] <= cutoff]["item_id"])
    everything = read_items(out, "ml-latest-small").set_index("item_id")["tags"]
    before = read_items(out, "ml-latest-small", cutoff).set_index("item_id")["tags"]
    assert only_late and all(everything[i] for i in only_late) and not any(before[i] for i in only_late)
    assert (before.str.len() <= everything.str.len()).all()


def _synthetic_csv(path, origin=0, clock=False, users=12, title=True):
    """Synthetic events: user k has 3 + k % 5 events, at positions origin, origin+1, ... (or at clock times)."""
    lines = ["user,item,timestamp" + (",Title" if title else "")]
    for u in range(users):
        for pos in range(3 + u % 5):
            item = (u * 7 + pos * 3) % 20
            ts = 1_700_000_000 + 3_600 * (u * 11 % 17) + 60 * pos if clock else origin + pos
            lines.append(f"u{u},i{item},{ts}" + (f",Item number {item}" if title else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("origin", [0, 1])
def test_order_position_csv_is_detected_recorded_and_layered(tmp_path, origin):
    """Synthetic per-user positions → ``order``, recorded in the manifest, picked up by ``dataset=NAME``."""
    out = import_csv(_synthetic_csv(tmp_path / "pos.csv", origin), "mine", DataConfig(workdir=str(tmp_path)))
    manifest = read_manifest(out)
    assert manifest["protocol"] == "order" and manifest["protocol_source"] == "detected"
    assert (manifest["users"], manifest["interactions"]) == (12, sum(3 + u % 5 for u in range(12)))
    assert layered_dict(overrides=["dataset=mine", f"data.workdir={tmp_path}"])["data"]["protocol"] == "order"
    # another dataset in the same workdir is not affected
    assert layered_dict(overrides=[f"data.workdir={tmp_path}"])["data"]["protocol"] == "shift"


def test_clock_csv_is_shift(tmp_path):
    """Synthetic epoch-second timestamps (users start at different times) → ``shift``."""
    out = import_csv(_synthetic_csv(tmp_path / "clock.csv", clock=True), "mine", DataConfig(workdir=str(tmp_path)))
    assert read_manifest(out)["protocol"] == "shift"
    assert layered_dict(overrides=["dataset=mine", f"data.workdir={tmp_path}"])["data"]["protocol"] == "shift"


def test_given_protocol_overrides_detection_and_a_contradicting_override_warns(tmp_path, caplog):
    """Synthetic positions imported with protocol=shift: recorded as given; data.protocol=order wins with a warning."""
    out = import_csv(_synthetic_csv(tmp_path / "pos.csv"), "mine", DataConfig(workdir=str(tmp_path)), protocol="shift")
    manifest = read_manifest(out)
    assert (manifest["protocol"], manifest["protocol_source"], manifest["detected"]["protocol"]) == (
        "shift", "given", "order")
    base = ["dataset=mine", f"data.workdir={tmp_path}"]
    assert layered_dict(overrides=base)["data"]["protocol"] == "shift"
    with caplog.at_level("WARNING", logger="recsys.config"):
        assert layered_dict(overrides=[*base, "data.protocol=order"])["data"]["protocol"] == "order"
    assert "prepared with protocol shift" in caplog.text
    with pytest.raises(DatasetError, match="unknown protocol 'time'"):
        import_csv(tmp_path / "pos.csv", "other", DataConfig(workdir=str(tmp_path)), protocol="time")


def test_csv_title_column_reaches_the_item_file(tmp_path):
    """Synthetic CSV: a ``Title`` header (any case) gives the item titles, first among the text columns; without
    one, the title is the item id."""
    csv = tmp_path / "t.csv"
    csv.write_text("User,item,timestamp,brand,Title\nu1,a,0,X,Alpha\nu1,b,1,Y,Beta\nu2,a,0,,\nu2,c,1,Z,Gamma\n")
    items = read_items(import_csv(csv, "mine", DataConfig(workdir=str(tmp_path))), "mine")
    assert list(items.columns) == ["item_id", "title", "brand"]
    assert list(items["title"]) == ["Alpha", "Beta", "Gamma"]
    assert read_manifest(tmp_path / "mine")["titles_are_ids"] is False
    out = import_csv(_synthetic_csv(tmp_path / "p.csv", title=False), "plain", DataConfig(workdir=str(tmp_path)))
    items = read_items(out, "plain")
    assert list(items["title"]) == list(items["item_id"]) and read_manifest(out)["titles_are_ids"] is True
