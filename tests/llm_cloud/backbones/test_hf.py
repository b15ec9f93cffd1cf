"""llm_cloud.backbones.hf: tiny random-weight HF models (encoder and decoder) and the packaged SmolLM2 GGUF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_cloud.backbones import BackboneConfig, BackboneError, build_backbone
from llm_cloud.backbones.config import HFConfig
from llm_cloud.backbones.hf import HFBackbone
from llm_cloud.backbones.st import packaged_minilm


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
