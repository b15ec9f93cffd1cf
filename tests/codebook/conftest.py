from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def emb_cache(tmp_path_factory):
    """One embedding cache dir for the session (shared with tests/codebook through its name)."""
    path = tmp_path_factory.getbasetemp() / "emb-cache"
    path.mkdir(exist_ok=True)
    return path
