"""The application config: the recipes' :class:`~recipes.config.RecipeConfig` plus ``serve:``."""

from __future__ import annotations

from pydantic import Field

from recipes.config import RecipeConfig
from recsys.config import load_config
from serving.serve_config import ServeConfig


class AppConfig(RecipeConfig):
    """Everything ``persona`` reads from YAML: the recipes' sections and the services' ``serve:`` (the process, and
    its ``http``, ``device`` and ``cloud`` sections)."""

    serve: ServeConfig = Field(default_factory=ServeConfig)


def load_app_config(user_file: str | None = None, overrides: list[str] | None = None) -> AppConfig:
    return load_config(user_file, overrides, schema=AppConfig)
