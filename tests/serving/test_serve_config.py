"""The ``serve:`` section (:mod:`serving.serve_config`): the process at its top, ``http`` / ``device`` / ``cloud``
sections by who reads them, one strict base (an unknown key anywhere is an error naming its dotted path), and the
defaults of the flat section it replaced."""

from __future__ import annotations

import pytest

from cli.main import main
from llm_cloud.distill import DistillConfig
from recsys.config import ConfigError, StrictConfig
from serving.config import AppConfig, load_app_config
from serving.serve_config import CloudConfig, DeviceConfig, HttpConfig, ServeConfig

# the flat ``serve:`` (and top-level ``cloud:``) defaults before the sections: (old key, new dotted path, default)
OLD_DEFAULTS = [
    ("serve.role", "serve.role", "all"),
    ("serve.host", "serve.host", "127.0.0.1"),
    ("serve.port", "serve.port", 8000),
    ("serve.cloud_port", "serve.cloud_port", 8001),
    ("serve.workers", "serve.workers", 1),
    ("serve.cloud_url", "serve.device.cloud_url", None),
    ("serve.api_key", "serve.api_key", None),
    ("serve.operator_key", "serve.operator_key", None),
    ("serve.user_token_ttl_s", "serve.device.user_token_ttl_s", 86_400),
    ("serve.max_clock_skew_s", "serve.device.max_clock_skew_s", 300.0),
    ("serve.max_unknown_items", "serve.device.max_unknown_items", 1000),
    ("serve.user_rate_per_s", "serve.device.user_rate_per_s", 20.0),
    ("serve.user_burst", "serve.device.user_burst", 40),
    ("serve.http.allowed_hosts", "serve.http.allowed_hosts", None),
    ("serve.http.cors_origins", "serve.http.cors_origins", []),
    ("serve.http.docs", "serve.http.docs", False),
    ("serve.http.max_body_bytes", "serve.http.max_body_bytes", 1_048_576),
    ("serve.http.body_timeout_s", "serve.http.body_timeout_s", 5.0),
    ("serve.http.header_timeout_s", "serve.http.header_timeout_s", 10.0),
    ("serve.http.keepalive_timeout_s", "serve.http.keepalive_timeout_s", 5.0),
    ("serve.http.max_connections", "serve.http.max_connections", 4096),
    ("serve.http.access_log", "serve.http.access_log", True),
    ("serve.checkpoint", "serve.checkpoint", None),
    ("serve.seed", "serve.seed", 0),
    ("serve.adapter_dir", "serve.cloud.adapter_dir", None),
    ("serve.db_path", "serve.device.db_path", None),
    ("serve.prototype_cache", "serve.device.prototype_cache", None),
    ("serve.sqlite_synchronous", "serve.device.sqlite_synchronous", "FULL"),
    ("serve.runtime", "serve.device.runtime", "torch"),
    ("serve.onnx_dir", "serve.device.onnx_dir", None),
    ("serve.budget_ms", "serve.device.budget_ms", 50.0),
    ("serve.catchup_timeout_s", "serve.device.catchup_timeout_s", 5.0),
    ("serve.cloud_retry_s", "serve.device.cloud_retry_s", 2.0),
    ("serve.breaker_window", "serve.device.breaker_window", 20),
    ("serve.breaker_overruns", "serve.device.breaker_overruns", 10),
    ("serve.request_policy", "serve.device.request_policy", "refresh"),
    ("serve.refresh_every", "serve.device.refresh_every", 5),
    ("serve.request_rate", "serve.device.request_rate", 0.2),
    ("serve.edit_max_age", "serve.device.edit_max_age", None),
    ("serve.prototypes_refresh_s", "serve.device.prototypes_refresh_s", 60.0),
    ("serve.cache_gate", "serve.device.cache_gate", True),
    ("serve.dynamic_bank", "serve.cloud.dynamic_bank", False),
    ("serve.bank_publish_every", "serve.cloud.bank_publish_every", 256),
    ("serve.bank_keep", "serve.cloud.bank_keep", 32),
    ("serve.edit_cache_size", "serve.device.edit_cache_size", 10_000),
    ("serve.edit_encoding", "serve.device.edit_encoding", "code"),
    ("serve.max_batch", "serve.device.max_batch", 64),  # rank batches (the device) ...
    ("serve.max_batch", "serve.cloud.max_batch", 64),  # ... and edit batches (the cloud): one key each now
    ("serve.batch_wait_ms", "serve.device.batch_wait_ms", 1.0),
    ("serve.history_cache_users", "serve.device.history_cache_users", 10_000),
    ("serve.reload_poll_s", "serve.cloud.reload_poll_s", 2.0),
    ("cloud.edit_source", "serve.cloud.edit_source", "auto"),
    ("cloud.teacher", "serve.cloud.teacher", None),
    ("cloud.distill.steps", "serve.cloud.distill.steps", 60),
    ("cloud.distill.lr", "serve.cloud.distill.lr", 0.05),
    ("cloud.distill.clip", "serve.cloud.distill.clip", 1.0),
]
SECTIONS = {"http": HttpConfig, "device": DeviceConfig, "cloud": CloudConfig}


def _at(cfg: AppConfig, path: str):
    node = cfg
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _leaves(model, prefix: str) -> set[str]:
    """Every dotted field path under ``model`` (sub-configs walked into)."""
    out = set()
    for name in type(model).model_fields:
        value = getattr(model, name)
        out |= _leaves(value, f"{prefix}.{name}") if isinstance(value, StrictConfig) else {f"{prefix}.{name}"}
    return out


def test_serve_is_the_process_and_three_sections():
    cfg = AppConfig()
    top = set(ServeConfig.model_fields)
    assert top == {"role", "host", "port", "cloud_port", "workers", "api_key", "operator_key", "checkpoint", "seed",
                   *SECTIONS}  # fmt: skip
    assert len(top) <= 12
    assert "cloud" not in AppConfig.model_fields  # what the cloud sends is serve.cloud now
    for name, section in SECTIONS.items():
        assert isinstance(getattr(cfg.serve, name), section)
    for config in (ServeConfig, *SECTIONS.values(), DistillConfig):  # one strict base
        assert issubclass(config, StrictConfig)
    assert DeviceConfig().state_paths("runs", "ml-100k")[0].as_posix() == "runs/serve/ml-100k/events.db"


def test_defaults_are_the_flat_sections_defaults_field_by_field():
    cfg = AppConfig()
    for old, new, default in OLD_DEFAULTS:
        value = _at(cfg, new)
        assert value == default and type(value) is type(default), (old, new, value)
    assert {new for _, new, _ in OLD_DEFAULTS} == _leaves(cfg.serve, "serve")  # no field added or lost


@pytest.mark.parametrize("path", ["serve", "serve.http", "serve.device", "serve.cloud", "serve.cloud.distill"])
def test_an_unknown_key_in_each_section_is_refused_naming_its_path(path):
    with pytest.raises(ConfigError, match=f"config field '{path}.nope'"):
        load_app_config(None, [f"{path}.nope=1"])


@pytest.mark.parametrize(("old", "named"), [("serve.budget_ms", "serve.budget_ms"),
                                            ("serve.adapter_dir", "serve.adapter_dir"), ("cloud.edit_source", "cloud")])
def test_a_flat_key_of_before_is_refused_naming_it(old, named):
    with pytest.raises(ConfigError, match=f"config field '{named}'"):
        load_app_config(None, [f"{old}=1"])


def test_an_override_reaches_its_section_through_the_cli_loading(capsys):
    cfg = load_app_config(None, ["serve.device.budget_ms=20", "serve.cloud.max_batch=1", "serve.http.docs=true",
                                 "serve.cloud.distill.steps=3", "serve.port=9000"])  # fmt: skip
    assert (cfg.serve.device.budget_ms, cfg.serve.cloud.max_batch, cfg.serve.http.docs) == (20.0, 1, True)
    assert (cfg.serve.cloud.distill.steps, cfg.serve.port, cfg.serve.device.max_batch) == (3, 9000, 64)
    assert main(["config", "serve.device.budget_s=20"]) == 2  # the CLI: one line naming the dotted path
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("persona ")]
    assert len(err) == 1 and err[0].startswith("persona config: error: config field 'serve.device.budget_s'"), err
