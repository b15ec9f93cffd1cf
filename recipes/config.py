"""The config the recipes read: recsys's :class:`PersonaConfig` plus the cloud packages' sections.

``serving.config.AppConfig`` extends it with the ``serve:`` section; the recipes never need that one.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import Field

from codebook import CodebookConfig
from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
from llm_cloud.backbones.config import BackboneConfig
from llm_cloud.context_text import ContextConfig
from llm_cloud.item_delta import ItemDeltaConfig
from recsys.config import PersonaConfig, deep_merge, load_config, parse_overrides, validate

C = TypeVar("C", bound=PersonaConfig)


class RecipeConfig(PersonaConfig):
    """Everything the pipelines read from YAML: the device sections and those of llm_cloud / codebook."""

    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    codebook: CodebookConfig = Field(default_factory=CodebookConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    prototypes: PrototypeConfig = Field(default_factory=PrototypeConfig)
    item_delta: ItemDeltaConfig = Field(default_factory=ItemDeltaConfig)  # the served checkpoint's item rows


def load_recipe_config(user_file: str | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    return load_config(user_file, overrides, schema=RecipeConfig)


def with_overrides(cfg: C, overrides: list[str]) -> C:
    """``cfg`` with ``key=value`` overrides laid over it (validated again, same class)."""
    return validate(deep_merge(cfg.model_dump(), parse_overrides(overrides)), type(cfg))
