"""recipes.config: the recipes' config (recsys's sections plus the cloud packages'), its layering, overrides laid over
a validated config; the app config extends it with ``serve:`` only."""

from __future__ import annotations

import pytest

from codebook import CodebookConfig
from recipes.config import RecipeConfig, load_recipe_config, with_overrides
from recsys.config import ConfigError, PersonaConfig
from serving.config import AppConfig


def test_app_config_is_a_recipe_config():
    assert issubclass(AppConfig, RecipeConfig)
    assert set(RecipeConfig.model_fields) | {"serve"} == set(AppConfig.model_fields)


def test_the_recipe_config_adds_the_cloud_sections_to_persona_config():
    assert issubclass(RecipeConfig, PersonaConfig)
    added = set(RecipeConfig.model_fields) - set(PersonaConfig.model_fields)
    assert added == {"backbone", "context", "codebook", "adapter", "prototypes", "item_delta"}
    assert isinstance(load_recipe_config().codebook, CodebookConfig)


def test_with_overrides_keeps_the_class_and_validates_again():
    cfg = load_recipe_config(overrides=["model=gru4rec"])
    out = with_overrides(cfg, ["adapter.window=7", "seeds=[2,3]"])
    assert type(out) is RecipeConfig and (out.adapter.window, out.seeds, out.model) == (7, [2, 3], "gru4rec")
    assert cfg.adapter.window != 7  # the original is left as it was
    app = with_overrides(AppConfig(), ["serve.port=9000"])
    assert type(app) is AppConfig and app.serve.port == 9000
    with pytest.raises(ConfigError):
        with_overrides(cfg, ["adapter.window=0"])
