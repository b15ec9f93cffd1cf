"""codebook.config: the ``codebook:`` section, its bounds, and unknown keys refused when the config is layered."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from codebook.config import CodebookConfig
from recipes.config import load_recipe_config
from recsys.config import ConfigError


def test_defaults_are_a_three_level_eight_bit_residual_quantizer_with_unique_ids():
    cfg = CodebookConfig()
    assert (cfg.method, cfg.levels, cfg.max_levels, cfg.bits, cfg.dedup) == ("rq", 3, 6, 8, True)
    assert cfg.center and cfg.normalize and cfg.max_collision_rate == 0.05


@pytest.mark.parametrize("bad", [{"levels": 0}, {"bits": 1}, {"bits": 17}, {"max_collision_rate": 1.5},
                                 {"method": "kmeans"}, {"beam_size": 0}, {"levles": 3}])
def test_out_of_range_values_and_unknown_keys_are_refused(bad):
    with pytest.raises(ValidationError):
        CodebookConfig(**bad)


def test_the_section_is_layered_from_overrides_and_a_typo_names_the_key():
    cfg = load_recipe_config(overrides=["codebook.levels=4", "codebook.bits=6"])
    assert isinstance(cfg.codebook, CodebookConfig) and (cfg.codebook.levels, cfg.codebook.bits) == (4, 6)
    with pytest.raises(ConfigError, match="codebook.levles"):
        load_recipe_config(overrides=["codebook.levles=4"])
