"""Which hosts a service answers, and when a bind counts as loopback (serving.http_guards); the headers, CORS and
Host checks on the live services are in test_hostile.py."""

from __future__ import annotations

import pytest

from serving.http_guards import LOOPBACK_NAMES, allowed_hosts, is_loopback, is_wildcard
from serving.serve_config import HttpConfig


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False), ("::", False),
                                                ("192.168.1.20", False), ("example.org", False)])  # fmt: skip
def test_loopback_binds(host, loopback):
    assert is_loopback(host) is loopback


def test_allowed_hosts_default_to_loopback_plus_a_specific_bind_address():
    assert allowed_hosts(HttpConfig(), "127.0.0.1") == LOOPBACK_NAMES
    assert allowed_hosts(HttpConfig(), "10.1.2.3") == [*LOOPBACK_NAMES, "10.1.2.3"]
    assert allowed_hosts(HttpConfig(), "0.0.0.0") == LOOPBACK_NAMES and is_wildcard("0.0.0.0")
    assert allowed_hosts(HttpConfig(allowed_hosts=["api.example.org"]), "0.0.0.0") == ["api.example.org"]
