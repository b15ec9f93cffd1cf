"""llm_cloud.backbones.registry: one builder per backend section, the disk cache around it, unknown names refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llm_cloud.backbones import BACKBONE_NAMES, BUILDERS, BackboneConfig, BackboneError, CachedBackbone, build_backbone
from llm_cloud.backbones.registry import build_backbone as registry_build
from llm_cloud.backbones.st import SentenceTransformerBackbone
from recsys.config import ConfigError
from serving.config import load_app_config


def test_registry_matches_config_names():
    assert {type(BackboneConfig(name=n).section()) for n in BACKBONE_NAMES} == set(BUILDERS)  # one builder each


def test_unknown_backbone_is_a_clear_config_error():
    with pytest.raises(ValidationError, match="unknown backbone 'nope'"):
        BackboneConfig(name="nope")
    with pytest.raises(ConfigError, match=r"backbone.name.*unknown backbone 'nope'.*sentence-transformers"):
        load_app_config(None, ["backbone=nope"])
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone(BackboneConfig.model_construct(name="nope"))


def test_the_built_backbone_is_cached_on_disk_unless_asked_not_to(tmp_path):
    cfg = BackboneConfig(cache_dir=str(tmp_path / "cache"), cache_max_entries=5, progress=False)
    cached = registry_build(cfg)
    assert registry_build is build_backbone and isinstance(cached, CachedBackbone)
    assert isinstance(cached.inner, SentenceTransformerBackbone)
    assert isinstance(build_backbone(cfg, cached=False), SentenceTransformerBackbone)
    assert isinstance(build_backbone(cfg.model_copy(update={"cache": False})), SentenceTransformerBackbone)
    assert isinstance(build_backbone(cfg.model_copy(update={"cache": False}), cached=True), CachedBackbone)
