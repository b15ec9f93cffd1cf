"""The application config: recsys's :class:`PersonaConfig` plus the sections owned by the cloud packages."""

from __future__ import annotations

from pydantic import Field

from codebook import CodebookConfig
from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
from llm_cloud.backbones.config import BackboneConfig
from llm_cloud.context import ContextConfig
from recsys.config import PersonaConfig, load_config
from serving.serve_config import ServeConfig


class AppConfig(PersonaConfig):
    """Everything ``persona`` reads from YAML. Sections of llm_cloud/codebook/serving are added here."""

    serve: ServeConfig = Field(default_factory=ServeConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    codebook: CodebookConfig = Field(default_factory=CodebookConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    prototypes: PrototypeConfig = Field(default_factory=PrototypeConfig)


def load_app_config(user_file: str | None = None, overrides: list[str] | None = None) -> AppConfig:
    return load_config(user_file, overrides, schema=AppConfig)
