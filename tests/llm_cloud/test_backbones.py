"""Backbones: real MiniLM, tiny random-weight HF models (encoder and decoder), SmolLM2 GGUF, registry, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from llm_cloud.backbones import BACKBONE_NAMES, BUILDERS, BackboneConfig, BackboneError, build_backbone
from llm_cloud.backbones.config import HFConfig
from llm_cloud.backbones.hf import HFBackbone
from llm_cloud.backbones.st import packaged_minilm
from recsys.config import ConfigError
from serving.config import load_app_config
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


def test_batching_and_order_do_not_change_vectors():
    texts = [f"movie number {i} " + "word " * (i % 7) for i in range(11)]
    m = minilm()
    full = m.encode(texts)
    old = m.batch_size
    try:
        m.batch_size = 3
        small = m.encode(texts)
    finally:
        m.batch_size = old
    np.testing.assert_allclose(full, small, atol=1e-5)
    np.testing.assert_allclose(full[4], m.encode([texts[4]])[0], atol=1e-5)


def test_registry_matches_config_names():
    assert {type(BackboneConfig(name=n).section()) for n in BACKBONE_NAMES} == set(BUILDERS)  # one builder each


def test_unknown_backbone_is_a_clear_config_error():
    with pytest.raises(ValidationError, match="unknown backbone 'nope'"):
        BackboneConfig(name="nope")
    with pytest.raises(ConfigError, match=r"backbone.name.*unknown backbone 'nope'.*sentence-transformers"):
        load_app_config(None, ["backbone=nope"])
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone(BackboneConfig.model_construct(name="nope"))


def test_backbone_shorthand_override():
    cfg = load_app_config(None, ["backbone=hf", "codebook.levels=4"])
    assert cfg.backbone.name == "hf" and cfg.backbone.hf.pooling == "mean" and cfg.codebook.levels == 4


@pytest.mark.parametrize("texts,msg", [(["fine", "  "], "text 1 is empty"), ([], "no texts"),
                                       ("one string", "list of strings"), (["ok", None], "text 1 is NoneType")])
def test_bad_input_is_rejected(texts, msg):
    with pytest.raises(BackboneError, match=msg):
        minilm().encode(texts)


# ---- hf: tiny random-weight models built from configs ----------------------------------------------

def _tiny(tmp_path, kind: str):
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

    tok = AutoTokenizer.from_pretrained(str(packaged_minilm()), local_files_only=True)
    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    else:
        model = LlamaModel(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                       max_position_embeddings=128))
    out = tmp_path / kind
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, model.eval(), tok


@pytest.mark.parametrize("kind,pooling", [("bert", "mean"), ("llama", "last"), ("llama", "mean")])
def test_hf_tiny_model_pooling_matches_unpadded_forward(tmp_path, kind, pooling):
    path, model, tok = _tiny(tmp_path, kind)
    backbone = HFBackbone(HFConfig(model=str(path), pooling=pooling), batch_size=4, progress=False)
    texts = ["a", "a much longer text with many more tokens in it", "mid length text", "b c", "another one here"]
    emb = backbone.encode(texts)
    assert emb.shape == (5, 32) and backbone.dim == 32
    for i, text in enumerate(texts):  # each text alone, no padding: pooling must ignore pad positions
        with torch.inference_mode():
            hidden = model(**tok([text], return_tensors="pt")).last_hidden_state[0]
        ref = hidden.mean(0) if pooling == "mean" else hidden[-1]
        np.testing.assert_allclose(emb[i], ref.numpy(), atol=2e-4)


def test_hf_instruction_prefix_changes_output_and_key(tmp_path):
    path, _, _ = _tiny(tmp_path, "bert")
    plain = HFBackbone(HFConfig(model=str(path)), progress=False)
    prefixed = HFBackbone(HFConfig(model=str(path), instruction="Represent this movie: "), progress=False)
    assert plain.key != prefixed.key
    assert not np.allclose(plain.encode(["Heat"]), prefixed.encode(["Heat"]))


def test_hf_missing_or_bad_model(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        HFBackbone(HFConfig(model=str(tmp_path / "nope")))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(BackboneError, match="gguf"):
        HFBackbone(HFConfig(model=str(tmp_path / "weights.bin")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="cannot load"):
        HFBackbone(HFConfig(model=str(tmp_path / "empty")))


@pytest.mark.slow
def test_smollm2_gguf_real_llm():
    """The packaged SmolLM2-135M-Instruct GGUF: real 576-d states, anisotropic until centred (facts.md)."""
    backbone = build_backbone(BackboneConfig(name="hf", progress=False), cached=False)
    texts = ["Toy Story (1995). Genres: Animation, Children's, Comedy.", "Heat (1995). Genres: Action, Crime.",
             "Moisturizing shampoo for dry hair", "Digital caliper, stainless steel, 6 inch",
             "GoldenEye (1995). Genres: Action, Adventure, Thriller."]
    emb = backbone.encode(texts)
    assert emb.shape == (5, 576) and np.isfinite(emb).all()
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    raw_cos = (unit @ unit.T)[np.triu_indices(5, 1)]
    centred = emb - emb.mean(0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    assert raw_cos.mean() > 0.7  # anisotropic raw states
    assert (centred @ centred.T)[np.triu_indices(5, 1)].mean() < raw_cos.mean() - 0.5
    # centred, the two 1995 action films are closer to each other than to the shampoo
    assert centred[1] @ centred[4] > centred[1] @ centred[2]


def test_each_backend_names_the_model_the_cloud_serves():
    """The cloud's /v1/embeddings answers to the model path's last part, as vLLM does (a GGUF: its stem)."""
    names = [
        (BackboneConfig(), "all-MiniLM-L6-v2"),
        (BackboneConfig(name="sentence-transformers", sentence_transformers={"model": "/m/my-st"}), "my-st"),
        (BackboneConfig(name="hf"), "SmolLM2-135M-Instruct"),
        (BackboneConfig(name="hf", hf={"model": "/m/q/SmolLM2-Q8.gguf"}), "SmolLM2-Q8"),
        (BackboneConfig(name="hf", hf={"model": "/m/qwen-0.5b"}), "qwen-0.5b"),
        (BackboneConfig(name="openai-http", openai_http={"model": "bge-small"}), "bge-small"),
    ]
    assert [cfg.served_name() for cfg, _ in names] == [name for _, name in names]
