"""llm_cloud.backbones.config: the ``backbone:`` section (one sub-section per backend, the shorthand) and the model
name each backend serves."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llm_cloud.backbones.config import BACKBONE_NAMES, SECTIONS, BackboneConfig, HFConfig, OpenAIHTTPConfig
from serving.config import load_app_config


def test_backbone_shorthand_override():
    cfg = load_app_config(None, ["backbone=hf", "codebook.levels=4"])
    assert cfg.backbone.name == "hf" and cfg.backbone.hf.pooling == "mean" and cfg.codebook.levels == 4


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


def test_each_name_has_its_section_and_section_returns_it():
    assert BACKBONE_NAMES == tuple(SECTIONS) == ("sentence-transformers", "hf", "openai-http")
    assert isinstance(BackboneConfig(name="hf").section(), HFConfig)
    assert isinstance(BackboneConfig.model_validate("openai-http").section(), OpenAIHTTPConfig)  # the shorthand


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"hf": {"pooling": "max"}}, {"hf": {"max_length": 2}},
                                 {"openai_http": {"concurrency": 0}}, {"cache_max_bytes": 0}, {"sentense": 1}])
def test_bad_values_and_unknown_keys_are_refused(bad):
    with pytest.raises(ValidationError):
        BackboneConfig(**bad)
