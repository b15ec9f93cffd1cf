from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def emb_cache(tmp_path_factory):
    """One embedding cache dir for the session (shared with tests/codebook through its name)."""
    path = tmp_path_factory.getbasetemp() / "emb-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def items(workdir, emb_cache):
    """Real all-MiniLM-L6-v2 embeddings of every ml-100k item (encoded once per session)."""
    from tests.llm_cloud.helpers import ml100k_embeddings

    return ml100k_embeddings(workdir, emb_cache)
