"""serving.config: the app config (the recipes' sections plus ``serve:``) read from a user file with overrides on top,
and carried to spawned workers as JSON unchanged."""

from __future__ import annotations

import pytest

from recsys.config import ConfigError
from serving.config import AppConfig, load_app_config


def test_a_user_file_and_overrides_layer_over_the_defaults(tmp_path):
    user = tmp_path / "persona.yaml"
    user.write_text("model: gru4rec\nserve:\n  port: 9100\n  device:\n    budget_ms: 80\n  http:\n    docs: true\n")
    cfg = load_app_config(str(user), ["serve.port=9200", "adapter.window=6"])
    assert isinstance(cfg, AppConfig) and cfg.model == "gru4rec" and cfg.adapter.window == 6
    assert (cfg.serve.port, cfg.serve.device.budget_ms, cfg.serve.http.docs) == (9200, 80.0, True)
    assert load_app_config().serve.port == 8000  # the file changed nothing for the next load


def test_a_bad_serve_value_in_the_file_is_a_config_error(tmp_path):
    user = tmp_path / "persona.yaml"
    user.write_text("serve:\n  port: 70000\n")
    with pytest.raises(ConfigError, match="serve.port"):
        load_app_config(str(user))


def test_workers_rebuild_the_same_config_from_its_json():
    cfg = load_app_config(overrides=["serve.role=device", "serve.workers=3", "serve.device.cloud_url=http://c:1",
                                     "serve.cloud.teacher=[a,b]", "codebook.levels=4"])
    assert AppConfig.model_validate_json(cfg.model_dump_json()) == cfg
