"""recsys.run_layout: the paths, the manifest round trip, and old run dirs without one."""

from __future__ import annotations

import json

import pytest

from recsys import run_layout
from recsys.config import load_config


def test_paths_follow_the_layout(tmp_path):
    run = run_layout.seed_dir(tmp_path, "ml-100k", "sasrec", 2)
    assert run == tmp_path / "ml-100k" / "sasrec" / "seed2" == load_config(overrides=[f"output_dir={tmp_path}"],
                                                                          ).model_copy(update={"seeds": [2]}).run_dir(2)
    assert run_layout.adapter_dir(run) == run / "adapter-main"
    assert run_layout.bank_dir(run, "centre") == run / "bank-centre"
    assert run_layout.prototypes_file(run) == run / "prototypes.json"
    assert run_layout.item_side_file(tmp_path, "x") == tmp_path / "x" / "codebook" / "item_side.npz"


def test_manifest_round_trip(tmp_path):
    run = tmp_path / "seed0"
    run_layout.record(run, "checkpoint", config={"lr": 1})
    run_layout.record(run, "adapter", "main", {"window": 4})
    run_layout.record(run, "bank", "centre", {"k": 3})
    written = run_layout.record(run, "prototypes", "centre", {"k": 3})
    raw = json.loads(run_layout.manifest_file(run).read_text())
    assert raw["format"] == run_layout.MANIFEST_FORMAT and set(raw["adapters"]) == {"main"}
    back = run_layout.read_manifest(run)
    assert back == written and not back.derived
    assert back.adapters["main"].path == "adapter-main" and back.adapters["main"].written
    assert back.checkpoint.config_digest == run_layout.digest({"lr": 1}) != run_layout.digest({"lr": 2})
    assert back.served_bank() == "centre"
    with pytest.raises(ValueError):
        run_layout.record(run, "adapter")  # a variant is needed


def test_old_run_dir_is_derived_from_its_files(tmp_path):
    run = tmp_path / "seed0"
    for d, mark in (("adapter-main", "adapter.yaml"), ("bank-centre", "bank.yaml"), ("bank-finetune", "bank.yaml")):
        (run / d).mkdir(parents=True)
        (run / d / mark).write_text("{}")
    (run / "adapter-duet").mkdir()  # incomplete: no adapter.yaml
    (run / "model.yaml").write_text("{}")
    m = run_layout.read_manifest(run)
    assert m.derived and m.checkpoint is not None and m.prototypes is None
    assert set(m.adapters) == {"main"} and set(m.banks) == {"centre", "finetune"}
    assert m.served_bank() == "finetune"  # BANK_SEARCH_ORDER
    assert not run_layout.manifest_file(run).exists()  # reading writes nothing
    # the first record keeps what was already there
    assert set(run_layout.record(run, "adapter", "duet").adapters) == {"main", "duet"}
    assert set(run_layout.read_manifest(run).banks) == {"centre", "finetune"}
