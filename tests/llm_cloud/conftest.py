from __future__ import annotations

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads a real LLM (SmolLM2 GGUF, ~15-30 s); still part of the suite")


@pytest.fixture(scope="session")
def emb_cache(tmp_path_factory):
    """One embedding cache dir for the session (shared with tests/codebook through its name)."""
    path = tmp_path_factory.getbasetemp() / "emb-cache"
    path.mkdir(exist_ok=True)
    return path
