"""The application config: the recipes' :class:`~recipes.config.RecipeConfig` plus ``serve:`` and ``cloud:``."""

from __future__ import annotations

from pydantic import Field

from recipes.config import RecipeConfig
from recsys.config import load_config
from serving.serve_config import CloudConfig, ServeConfig


class AppConfig(RecipeConfig):
    """Everything ``persona`` reads from YAML: the recipes' sections, the services' ``serve:`` and the cloud's
    edit source ``cloud:``."""

    serve: ServeConfig = Field(default_factory=ServeConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)


def load_app_config(user_file: str | None = None, overrides: list[str] | None = None) -> AppConfig:
    return load_config(user_file, overrides, schema=AppConfig)
