"""``persona codebook`` end to end on ml-100k (embeddings come from the session cache), and its errors."""

from __future__ import annotations

import json

import numpy as np

from cli.main import main
from llm_cloud.pipeline import load_item_codebook
from tests.llm_cloud.helpers import ml100k_embeddings


def test_persona_codebook_writes_artifacts_and_report(tmp_path, tmp_path_factory, workdir, capsys):
    emb_cache = tmp_path_factory.getbasetemp() / "emb-cache"  # the session's cache (tests/llm_cloud, tests/codebook)
    emb_cache.mkdir(exist_ok=True)
    items = ml100k_embeddings(workdir, emb_cache)  # fills the cache the CLI reads
    args = ["codebook", "dataset=ml-100k", f"data.workdir={workdir}", f"output_dir={tmp_path / 'runs'}",
            f"reports_dir={tmp_path / 'reports'}", f"backbone.cache_dir={emb_cache}", "backbone.progress=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ml-100k: 1682 items" in out
    report = json.loads((tmp_path / "reports/codebook/ml-100k.json").read_text())
    assert report["min_utilisation"] >= 0.8 and report["collision_rate"] <= 0.05
    assert report["encode_s"] < 5  # cache hit: nothing encoded
    assert "| level |" in (tmp_path / "reports/codebook/ml-100k.md").read_text()
    item_ids, emb, book = load_item_codebook(tmp_path / "runs", "ml-100k")
    np.testing.assert_array_equal(emb, items.embeddings)
    assert item_ids == book.item_ids == items.item_ids
    assert book.semantic_ids.shape[0] == 1682


def test_backbone_shorthand_combines_with_dotted_keys():
    from cli.codebook import expand_shorthand
    from serving.config import load_app_config

    cfg = load_app_config(None, expand_shorthand(["backbone=hf", "backbone.threads=1"]))
    assert (cfg.backbone.name, cfg.backbone.threads, cfg.backbone.cache_dir) == ("hf", 1, ".cache/embeddings")


def test_persona_codebook_errors_are_one_line(tmp_path, workdir, capsys):
    assert main(["codebook", "backbone=nope"]) == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err
    args = ["codebook", f"data.workdir={workdir}", "backbone.name=hf", f"backbone.hf.model={tmp_path / 'missing'}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hf model not found" in err[0]


