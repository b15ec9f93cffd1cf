"""recsys.datasets.registry: the registered datasets, their checksums against the mirror, and where raw files are
found (or why not)."""

from __future__ import annotations

import hashlib

import pytest

from recsys.datasets.registry import (
    DatasetError,
    DatasetSpec,
    default_mirror,
    get_spec,
    load_registry,
    md5sum,
    raw_dir,
    verify_files,
)


def _spec(url: str | None = None, **files) -> DatasetSpec:
    return DatasetSpec("toy", "shift", True, ["title"], "test data", files, url=url)


def test_registry_checksums_match_the_mirror():
    mirror = default_mirror()
    if mirror is None:
        pytest.skip("no mirror")
    for name, spec in load_registry().items():
        for fname, md5 in spec.files.items():
            if md5:
                assert md5sum(mirror / name / fname) == md5, (name, fname)


def test_the_registry_names_every_dataset_with_its_protocol_and_licence():
    registry = load_registry()
    assert set(registry) == {"ml-100k", "ml-latest-small", "amazon-beauty", "amazon-scientific"}
    assert {n: s.protocol for n, s in registry.items()} == {"ml-100k": "shift", "ml-latest-small": "shift",
                                                            "amazon-beauty": "order", "amazon-scientific": "order"}
    assert all(s.licence and s.files for s in registry.values())
    assert registry["ml-100k"].embedded == "recbole/dataset_example/ml-100k"
    with pytest.raises(DatasetError, match=r"unknown dataset 'ml-20m' \(known: amazon-beauty, "):
        get_spec("ml-20m")


def test_md5sum_reads_in_chunks(tmp_path):
    blob = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(blob)
    assert md5sum(tmp_path / "f", chunk=1000) == hashlib.md5(blob).hexdigest()


def test_verify_files_names_a_missing_or_corrupt_file_and_null_means_existence_only(tmp_path):
    (tmp_path / "a.csv").write_text("x\n")
    (tmp_path / "b.txt").write_text("anything")
    good = hashlib.md5(b"x\n").hexdigest()
    verify_files(_spec(**{"a.csv": good, "b.txt": None}), tmp_path)
    with pytest.raises(DatasetError, match=r"toy: corrupt file .*a.csv \(md5 mismatch"):
        verify_files(_spec(**{"a.csv": "0" * 32}), tmp_path)
    with pytest.raises(DatasetError, match=r"toy: missing file .*c.csv"):
        verify_files(_spec(**{"c.csv": None}), tmp_path)


def test_raw_dir_uses_the_mirror_or_says_what_is_missing(tmp_path, monkeypatch):
    (tmp_path / "mirror" / "toy").mkdir(parents=True)
    (tmp_path / "mirror" / "toy" / "a.csv").write_text("x\n")
    spec = _spec(**{"a.csv": None})
    assert raw_dir(spec, tmp_path / "mirror", False, tmp_path / "cache") == tmp_path / "mirror" / "toy"
    with pytest.raises(DatasetError, match="data mirror directory not found: .*nowhere"):
        raw_dir(spec, tmp_path / "nowhere", False, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"toy: raw files not found \(mirror .*empty\)$"):
        raw_dir(spec, tmp_path / "empty", True, tmp_path / "cache")  # no URL: nothing to download
    downloadable = _spec("https://example.invalid/toy.zip", **{"a.csv": None})
    with pytest.raises(DatasetError, match="or pass data.download=true"):
        raw_dir(downloadable, tmp_path / "empty", False, tmp_path / "cache")
    monkeypatch.setenv("PERSONA_DATA_MIRROR", str(tmp_path / "mirror"))
    assert default_mirror() == tmp_path / "mirror"
    assert raw_dir(spec, None, False, tmp_path / "cache") == tmp_path / "mirror" / "toy"
