"""The OpenAI-compatible endpoint and the openai-http backbone, over a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from llm_cloud.backbones import BackboneConfig, BackboneError, CachedBackbone, build_backbone
from llm_cloud.backbones.config import OpenAIHTTPConfig
from llm_cloud.backbones.openai_http import OpenAIHTTPBackbone
from serving.embeddings_api import create_embeddings_app
from tests.llm_cloud.helpers import Flaky, Slow, free_port, minilm, serve

TEXTS = ["Toy Story (1995). Genres: Animation.", "Heat (1995)", "shampoo", "caliper", "GoldenEye", "Casino",
         "Sense and Sensibility"]


@pytest.fixture(scope="module")
def server():
    with serve(create_embeddings_app(minilm(), model_name="all-MiniLM-L6-v2")) as url:
        yield url


def client(base_url, **kw) -> OpenAIHTTPBackbone:
    return OpenAIHTTPBackbone(OpenAIHTTPConfig(base_url=base_url, backoff_s=0.01, **kw), batch_size=3, progress=False)


def test_remote_equals_local_in_order(server):
    remote = client(server, concurrency=2, dim=384).encode(TEXTS)  # 3 batches, 2 in flight
    np.testing.assert_allclose(remote, minilm().encode(TEXTS), atol=1e-5)


def test_build_by_config_and_cache(server, tmp_path):
    cfg = BackboneConfig(name="openai-http", cache_dir=str(tmp_path), progress=False,
                         openai_http=OpenAIHTTPConfig(base_url=server))
    backbone = build_backbone(cfg)
    assert isinstance(backbone, CachedBackbone)
    first = backbone.encode(TEXTS)
    assert backbone.encode(TEXTS) is not None and backbone.hits == 1
    np.testing.assert_allclose(first, minilm().encode(TEXTS), atol=1e-5)


def test_openai_wire_format(server):
    r = httpx.post(f"{server}/embeddings", json={"input": "Heat", "model": "x", "encoding_format": "base64"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "x" and body["usage"]["prompt_tokens"] == 1
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, minilm().encode(["Heat"])[0], atol=1e-6)


@pytest.mark.parametrize("payload,status,needle", [
    ({"input": []}, 400, "'input' must not be empty"),
    ({"input": ["ok", " "]}, 400, "'input[1]' is an empty string"),
    ({"model": "m"}, 422, "'input'"),
    ({"input": [1, 2]}, 422, "input"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "x", "dimensions": 512}, 400, "dimensions"),
])
def test_endpoint_validation_names_the_field(server, payload, status, needle):
    r = httpx.post(f"{server}/embeddings", json=payload)
    assert r.status_code == status
    assert needle in r.json()["error"]["message"]


def test_client_empty_text_fails_before_any_request():
    with pytest.raises(BackboneError, match="text 0 is empty"):
        client(f"http://127.0.0.1:{free_port()}/v1").encode([""])


def test_server_down_is_retried_then_clear(tmp_path):
    backbone = CachedBackbone(client(f"http://127.0.0.1:{free_port()}/v1", max_retries=2), tmp_path)
    with pytest.raises(BackboneError, match=r"failed after 3 tries: unreachable"):
        backbone.encode(TEXTS)
    assert not list(tmp_path.rglob("*.npy"))


def test_slow_server_times_out(tmp_path):
    with serve(create_embeddings_app(Slow(minilm(), delay_s=1.5))) as url:
        backbone = CachedBackbone(client(url, timeout_s=0.3, max_retries=1), tmp_path)
        with pytest.raises(BackboneError, match="timed out"):
            backbone.encode(TEXTS[:2])
    assert not list(tmp_path.rglob("*.npy"))


def test_5xx_is_retried_with_backoff():
    flaky = Flaky(minilm(), failures=2)
    with serve(create_embeddings_app(flaky)) as url:
        emb = client(url, max_retries=3).encode(TEXTS[:2])
        assert flaky.calls == 3
        np.testing.assert_allclose(emb, minilm().encode(TEXTS[:2]), atol=1e-5)
        flaky.calls, flaky.failures = 0, 10
        with pytest.raises(BackboneError, match=r"after 2 tries: HTTP 500: backbone failed: injected failure"):
            client(url, max_retries=1).encode(TEXTS[:2])


def test_wrong_dimension_is_an_error_and_not_cached(server, tmp_path):
    backbone = CachedBackbone(client(server, dim=512), tmp_path)
    with pytest.raises(BackboneError, match="wrong embedding dimension 384, expected 512"):
        backbone.encode(TEXTS)
    assert not list(tmp_path.rglob("*.npy"))


def test_api_key_4xx_is_not_retried():
    flaky = Flaky(minilm(), failures=0)
    with serve(create_embeddings_app(flaky, api_key="s3cret")) as url:
        with pytest.raises(BackboneError, match="HTTP 401: invalid or missing API key"):
            client(url, max_retries=3).encode(["x"])
        assert flaky.calls == 0
        assert client(url, api_key="s3cret").encode(["x"]).shape == (1, 384)
