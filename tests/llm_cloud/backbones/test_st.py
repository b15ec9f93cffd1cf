"""llm_cloud.backbones.st: the packaged all-MiniLM-L6-v2 through sentence-transformers, offline."""

from __future__ import annotations

import numpy as np
import pytest

from llm_cloud.backbones import BackboneConfig, BackboneError
from llm_cloud.backbones.st import SentenceTransformerBackbone, build, packaged_minilm
from tests.llm_cloud.helpers import minilm


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_minilm_real_weights_are_semantic():
    texts = ["Star Wars (1977). Genres: Action, Adventure, Sci-Fi.", "The Empire Strikes Back, space opera sequel",
             "Moisturizing shampoo for dry and damaged hair"]
    emb = minilm().encode(texts)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert cos(emb[0], emb[1]) > cos(emb[0], emb[2]) + 0.2


def test_the_key_names_the_model_its_weights_and_normalisation():
    key = minilm().key
    assert key.startswith(f"st:{packaged_minilm().name}:") and key.endswith(":norm=1") and minilm().dim == 384


def test_build_reads_the_config_section_and_a_missing_model_dir_is_named(tmp_path):
    cfg = BackboneConfig(batch_size=7, progress=False, sentence_transformers={"normalize": False})
    backbone = build(cfg)
    assert (backbone.batch_size, backbone.normalize, backbone.progress) == (7, False, False)
    assert backbone.key.endswith(":norm=0")
    np.testing.assert_allclose(backbone.encode(["Heat"]), minilm().encode(["Heat"]), atol=1e-5)  # MiniLM: unit anyway
    with pytest.raises(BackboneError, match="sentence-transformers model dir not found: .*missing"):
        SentenceTransformerBackbone(tmp_path / "missing")


def test_token_ids_decode_with_the_models_tokenizer():
    ids = minilm().tokenizer(["toy story"])["input_ids"]
    assert minilm().decode_tokens(ids) == ["toy story"]
    with pytest.raises(BackboneError, match="token sequence 0 has token id 999999"):
        minilm().decode_tokens([[101, 999999]])
