"""llm_cloud.adapter_config: the ``adapter:`` section (the loop with the adapter's own defaults) and ``prototypes:``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
from llm_cloud.adapter_train import loop_settings
from recipes.config import load_recipe_config
from recsys.config import LoopConfig


def test_the_adapter_loop_starts_without_a_plateau_to_wait_out():
    cfg, loop = AdapterConfig(), LoopConfig()
    assert isinstance(cfg, LoopConfig)
    assert (cfg.epochs, cfg.patience, cfg.min_epochs, cfg.plateau_gain) == (8, 3, 0, 0.0)
    assert (loop.epochs, loop.min_epochs, loop.plateau_gain) == (40, 5, 0.5)
    settings = loop_settings(AdapterConfig(samples_per_epoch=100), "hit@10", 30.0)
    assert (settings.epochs, settings.samples_per_epoch, settings.valid_metric) == (8, 100, "hit@10")


@pytest.mark.parametrize(("section", "bad"), [
    (AdapterConfig, {"window": 0}), (AdapterConfig, {"code_dim": 2}), (AdapterConfig, {"clip": 0}),
    (AdapterConfig, {"dropout": 1.0}), (AdapterConfig, {"windw": 4}),
    (PrototypeConfig, {"k": 0}), (PrototypeConfig, {"variant": "median"}), (PrototypeConfig, {"ood_quantile": 1.0}),
    (PrototypeConfig, {"refine_rate": 1.5}), (PrototypeConfig, {"assignment": "farthest"}),
])
def test_bad_values_and_unknown_keys_are_refused(section, bad):
    with pytest.raises(ValidationError):
        section(**bad)


def test_both_sections_are_layered_from_overrides():
    cfg = load_recipe_config(overrides=["adapter.window=4", "adapter.rank=2", "prototypes.variant=centre",
                                        "prototypes.refine_rate=0.1"])
    assert (cfg.adapter.window, cfg.adapter.rank, cfg.adapter.epochs) == (4, 2, 8)
    assert (cfg.prototypes.variant, cfg.prototypes.refine_rate, cfg.prototypes.k) == ("centre", 0.1, 8)
