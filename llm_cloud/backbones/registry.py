"""Backbone registry: a backend's config sub-section type → its builder (the names live once, in
``llm_cloud.backbones.config.SECTIONS``). Swapping the backbone is a config change only."""

from __future__ import annotations

from collections.abc import Callable

from llm_cloud.backbones import hf, openai_http, st
from llm_cloud.backbones.base import Backbone, BackboneError
from llm_cloud.backbones.cache import CachedBackbone
from llm_cloud.backbones.config import (
    BACKBONE_NAMES,
    BackboneConfig,
    HFConfig,
    OpenAIHTTPConfig,
    SentenceTransformersConfig,
)

BUILDERS: dict[type, Callable[[BackboneConfig], Backbone]] = {
    SentenceTransformersConfig: st.build,
    HFConfig: hf.build,
    OpenAIHTTPConfig: openai_http.build,
}


def build_backbone(cfg: BackboneConfig, cached: bool | None = None) -> Backbone:
    """The configured backbone, wrapped in the disk cache when ``cfg.cache`` (or ``cached``) says so."""
    if cfg.name not in BACKBONE_NAMES:  # (a validated config never has one)
        raise BackboneError(f"unknown backbone '{cfg.name}' (known: {', '.join(BACKBONE_NAMES)})")
    backbone = BUILDERS[type(cfg.section())](cfg)
    use_cache = cfg.cache if cached is None else cached
    if not use_cache:
        return backbone
    return CachedBackbone(backbone, cfg.cache_dir, cfg.cache_max_entries, cfg.cache_max_bytes)
