"""recipes.codebook: a dataset's items encoded by the configured backbone (here ``openai-http`` against a real local
embeddings server with a deterministic backbone: no model to load) and the codebook, side file and report written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from codebook import SemanticCodebook
from llm_cloud.pipeline import encode_items, load_item_codebook
from recipes.codebook import codebook, has_codebook
from recipes.config import load_recipe_config
from recsys import run_layout
from serving.embeddings_api import create_embeddings_app
from tests.llm_cloud.helpers import serve
from tests.llm_cloud.test_pipeline import Hashing


@pytest.fixture(scope="module")
def server():
    with serve(create_embeddings_app(Hashing(dim=16), model_name="hashing")) as url:
        yield url


def test_the_codebook_recipe_writes_every_artifact_and_the_report(server, workdir, tmp_path):
    cfg = load_recipe_config(overrides=[f"data.workdir={workdir}", f"output_dir={tmp_path / 'runs'}",
                                        f"reports_dir={tmp_path / 'reports'}", "backbone.name=openai-http",
                                        f"backbone.openai_http.base_url={server}", "backbone.openai_http.model=hashing",
                                        "backbone.cache=false", "codebook.recall_queries=100"])
    assert not has_codebook(cfg)
    out = codebook(cfg)
    assert has_codebook(cfg) and out.directory == run_layout.codebook_dir(cfg.output_dir, "ml-100k")
    item_ids, emb, book = load_item_codebook(cfg.output_dir, "ml-100k")
    assert len(item_ids) == 1682 and emb.shape == (1682, 16) and isinstance(book, SemanticCodebook)
    assert json.loads((out.directory / "backbone.json").read_text())["name"] == "openai-http"
    report = json.loads(out.report_stem.with_suffix(".json").read_text())
    assert report == json.loads(json.dumps(out.report))  # the JSON report is the returned one
    assert report["dataset"] == "ml-100k" and report["n_items"] == 1682 and report["text_cutoff"] is not None
    assert report["collision_rate"] == 0.0 and out.report_stem.with_suffix(".md").read_text().startswith(
        "# Semantic codebook: ml-100k")
    local = encode_items("ml-100k", cfg.data, cfg.context, Hashing(dim=16), report["text_cutoff"])
    np.testing.assert_allclose(emb, local.embeddings, rtol=1e-5, atol=1e-6)  # encoded over HTTP as locally
    with np.load(run_layout.item_side_file(cfg.output_dir, "ml-100k")) as side:  # the device's item side file
        assert side["item_ids"].tolist() == item_ids and np.array_equal(side["codes"], book.semantic_ids)
        np.testing.assert_array_equal(side["vectors"].shape, emb.shape)
