"""llm_cloud.pipeline: a dataset's items prepared, written as context texts and encoded (image features fused where
shipped); the codebook, its items and their embeddings read back as ``persona codebook`` saved them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from codebook import CodebookConfig, CodebookError, SemanticCodebook
from llm_cloud.backbones import Backbone
from llm_cloud.context_text import ContextConfig
from llm_cloud.pipeline import encode_items, load_item_codebook
from recsys import run_layout
from recsys.config import load_config
from recsys.datasets import prepare, read_items
from tests.conftest import needs_mirror


class Hashing(Backbone):
    """A deterministic backbone: each text's vector is seeded by its hash (no model to load)."""

    name = "hashing"
    key = "hashing:v1"

    def __init__(self, dim: int = 12):
        super().__init__(batch_size=256, progress=False)
        self.width, self.texts = dim, []

    def _encode_batch(self, texts):
        self.texts += texts
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        return np.stack([np.random.default_rng(s).normal(size=self.width) for s in seeds])


def test_ml100k_items_are_encoded_in_item_table_order(workdir):
    data = load_config(overrides=[f"data.workdir={workdir}"]).data
    backbone = Hashing()
    out = encode_items("ml-100k", data, ContextConfig(), backbone)
    table = read_items(prepare("ml-100k", data), "ml-100k")
    assert out.item_ids == table["item_id"].tolist() and len(out.texts) == 1682
    assert out.texts[0].startswith("Toy Story") and not out.fused_image and out.image is None
    assert out.embeddings.shape == (1682, 12) and out.embeddings.dtype == np.float32
    np.testing.assert_allclose(out.embeddings[5], Hashing().encode([out.texts[5]])[0])
    assert sorted(backbone.texts) == sorted(out.texts)


@needs_mirror
def test_shipped_image_features_are_fused_with_the_text(workdir):
    data = load_config(overrides=["dataset=amazon-scientific", f"data.workdir={workdir}"]).data
    out = encode_items("amazon-scientific", data, ContextConfig(image_weight=0.25), Hashing())
    assert out.fused_image and out.image.shape == (len(out.item_ids), 512)
    assert out.embeddings.shape == (len(out.item_ids), 12 + 512)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings[:, 12:], axis=1), 0.5, atol=1e-5)  # sqrt(0.25)
    text_only = encode_items("amazon-scientific", data, ContextConfig(image_weight=0.0), Hashing())
    assert not text_only.fused_image and text_only.embeddings.shape[1] == 12


def test_load_item_codebook_reads_what_was_saved_and_names_what_is_missing(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    ids = [f"i{k}" for k in range(50)]
    directory = SemanticCodebook.build(x, CodebookConfig(levels=1, max_levels=1, bits=4), item_ids=ids).save(
        run_layout.codebook_dir(tmp_path, "toy"))
    with pytest.raises(CodebookError, match="lacks item_embeddings.npy: run `persona codebook dataset=toy`"):
        load_item_codebook(tmp_path, "toy")
    np.save(directory / run_layout.ITEM_EMBEDDINGS_FILE, x[:10])
    with pytest.raises(CodebookError, match=r"shape \(10, 8\) does not match"):
        load_item_codebook(tmp_path, "toy")
    np.save(directory / run_layout.ITEM_EMBEDDINGS_FILE, x)
    item_ids, emb, book = load_item_codebook(tmp_path, "toy")
    assert item_ids == ids == book.item_ids
    np.testing.assert_array_equal(emb, x)
