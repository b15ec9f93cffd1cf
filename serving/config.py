"""The application config: recsys's :class:`PersonaConfig` plus the sections owned by the cloud packages."""

from __future__ import annotations

from recsys.config import PersonaConfig, load_config


class AppConfig(PersonaConfig):
    """Everything ``persona`` reads from YAML. Sections of llm_cloud/codebook/serving are added here."""


def load_app_config(user_file: str | None = None, overrides: list[str] | None = None) -> AppConfig:
    return load_config(user_file, overrides, schema=AppConfig)
