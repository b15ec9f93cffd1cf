"""LLM backbones behind one interface: ``encode(texts) -> float32 [n, d]``.

``build_backbone(cfg.backbone)`` picks ``sentence-transformers`` (default: packaged all-MiniLM-L6-v2),
``hf`` (local HF dir or GGUF; default: packaged SmolLM2-135M) or ``openai-http`` (vLLM or any
OpenAI-compatible server) by name, and wraps it in the on-disk embedding cache.
"""

from llm_cloud.backbones.base import Backbone, BackboneError
from llm_cloud.backbones.cache import CachedBackbone
from llm_cloud.backbones.config import BACKBONE_NAMES, BackboneConfig
from llm_cloud.backbones.registry import BUILDERS, build_backbone

__all__ = [
    "BUILDERS",
    "BACKBONE_NAMES",
    "Backbone",
    "BackboneConfig",
    "BackboneError",
    "CachedBackbone",
    "build_backbone",
]
