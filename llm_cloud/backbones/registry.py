"""Backbone registry: config name → builder. Swapping the backbone is a config change only."""

from __future__ import annotations

from collections.abc import Callable

from llm_cloud.backbones import hf, openai_http, st
from llm_cloud.backbones.base import Backbone, BackboneError
from llm_cloud.backbones.cache import CachedBackbone
from llm_cloud.backbones.config import BackboneConfig

BACKBONES: dict[str, Callable[[BackboneConfig], Backbone]] = {
    "sentence-transformers": st.build,
    "hf": hf.build,
    "openai-http": openai_http.build,
}


def build_backbone(cfg: BackboneConfig, cached: bool | None = None) -> Backbone:
    """The configured backbone, wrapped in the disk cache when ``cfg.cache`` (or ``cached``) says so."""
    builder = BACKBONES.get(cfg.name)
    if builder is None:
        raise BackboneError(f"unknown backbone '{cfg.name}' (known: {', '.join(BACKBONES)})")
    backbone = builder(cfg)
    use_cache = cfg.cache if cached is None else cached
    if not use_cache:
        return backbone
    return CachedBackbone(backbone, cfg.cache_dir, cfg.cache_max_entries, cfg.cache_max_bytes)
