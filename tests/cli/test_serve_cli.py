"""``persona serve`` (:mod:`cli.serve`): refused off loopback without its credentials, before anything loads
(the services themselves: ``tests/serving/``)."""

from __future__ import annotations

import pytest

from cli import CliError
from cli.serve import refuse_open_bind
from serving.serve_config import ServeConfig
from tests.conftest import one_line_error, persona


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--role", "device", "--host", "0.0.0.0"], {}, "serve.operator_key"),
        (["--role", "all", "--host", "0.0.0.0"], {}, "serve.api_key"),
        (["--role", "cloud", "--host", "192.0.2.7"], {}, "serve.api_key"),
        (["--role", "device", "--host", "0.0.0.0"], {"PERSONA_OPERATOR_KEY": "k"}, "serve.http.allowed_hosts"),
    ],
)
def test_serve_refuses_an_open_bind_without_credentials(tmp_path, args, env, setting):
    """Before anything loads: no checkpoint is needed to be refused (docs/security.md)."""
    clean = {"PERSONA_API_KEY": "", "PERSONA_OPERATOR_KEY": "", **env}
    proc = persona("serve", *args, f"serve.checkpoint={tmp_path / 'none'}", env=clean, timeout=60)
    one_line_error(proc, setting)


def test_loopback_needs_no_credentials(monkeypatch):
    monkeypatch.delenv("PERSONA_API_KEY", raising=False)
    monkeypatch.delenv("PERSONA_OPERATOR_KEY", raising=False)
    refuse_open_bind(ServeConfig(role="all", host="127.0.0.1"))
    with pytest.raises(CliError, match="refusing to serve on 192.0.2.7"):
        refuse_open_bind(ServeConfig(role="cloud", host="192.0.2.7"))
