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
    r = httpx.post(f"{server}/embeddings",
                   json={"input": "Heat", "model": "all-MiniLM-L6-v2", "encoding_format": "base64"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2" and body["usage"]["prompt_tokens"] == 1
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, minilm().encode(["Heat"])[0], atol=1e-6)


@pytest.mark.parametrize("payload,status,needle", [
    ({"input": []}, 400, "'input' must not be empty"),
    ({"input": ["ok", " "]}, 400, "'input[1]' is an empty string"),
    ({"model": "all-MiniLM-L6-v2"}, 422, "'input'"),
    ({"input": [1, "a"]}, 422, "input"),
    ({"input": [[101, 102], []]}, 400, "empty token list"),
    ({"input": [101, -1]}, 422, "input"),
    ({"input": [[101, 99999]]}, 400, "token id 99999"),
    ({"input": "x", "encoding_format": "int8"}, 422, "encoding_format"),
    ({"input": "x", "dimensions": 512}, 400, "dimensions"),
])
def test_endpoint_validation_names_the_field(server, payload, status, needle):
    r = httpx.post(f"{server}/embeddings", json=payload)
    assert r.status_code == status
    assert needle in r.json()["error"]["message"]
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("model", ["gpt-4", "x", ""])
def test_unknown_model_is_404_like_openai(server, model):
    r = httpx.post(f"{server}/embeddings", json={"input": "Heat", "model": model})
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["param"] == "model" and err["code"] == "model_not_found" and f"`{model}`" in err["message"]
    for served in ("all-MiniLM-L6-v2", "sentence-transformers", None):  # the served name, the backbone's, none
        assert httpx.post(f"{server}/embeddings", json={"input": "Heat", "model": served}).status_code == 200


def test_token_id_input_is_decoded_with_the_tokenizer(server):
    ids = minilm().tokenizer("Heat")["input_ids"]  # [CLS] heat [SEP]
    want = minilm().encode(["Heat"])[0]
    for payload in ({"input": [ids]}, {"input": ids}):
        r = httpx.post(f"{server}/embeddings", json=payload)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], want, atol=1e-5)
        assert r.json()["usage"]["prompt_tokens"] == len(ids)
    two = httpx.post(f"{server}/embeddings", json={"input": [ids, minilm().tokenizer("Casino")["input_ids"]]})
    np.testing.assert_allclose(np.asarray([d["embedding"] for d in two.json()["data"]]),
                               minilm().encode(["Heat", "Casino"]), atol=1e-5)


def test_token_ids_without_a_tokenizer_are_a_clear_400():
    with serve(create_embeddings_app(Slow(minilm(), delay_s=0))) as url:  # a wrapper: no tokenizer of its own
        r = httpx.post(f"{url}/embeddings", json={"input": [101, 2732, 102]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        assert "has no tokenizer" in r.json()["error"]["message"]


def test_api_key_checked_first_and_any_header_bytes_give_401():
    with serve(create_embeddings_app(minilm(), api_key="s3cret")) as url:
        cases = [
            ({"Authorization": b"Bearer \xff\xfe"}, {"input": "x"}),  # non-ASCII key (was a 500)
            ({"X-API-Key": b"\xe9t\xe9"}, {"input": "x"}),
            ({}, {}),  # unauthenticated and invalid: 401, not 422
            ({"Authorization": "Bearer wrong"}, {"input": 3}),
        ]
        for headers, body in cases:
            r = httpx.post(f"{url}/embeddings", json=body, headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["type"] == "authentication_error"
        raw = httpx.post(f"{url}/embeddings", content=b"{not json", headers={"content-type": "application/json"})
        assert raw.status_code == 401 and "error" in raw.json()
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{url}/embeddings", json={}, headers=ok).status_code == 422
        assert httpx.post(f"{url}/embeddings", json={"input": "x"}, headers={"X-API-Key": "s3cret"}).status_code == 200


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
        with pytest.raises(BackboneError, match="HTTP 401: missing API key"):
            client(url, max_retries=3).encode(["x"])
        assert flaky.calls == 0
        assert client(url, api_key="s3cret").encode(["x"]).shape == (1, 384)


def _capacity_server(capacity: int, delay_s: float = 0.05):
    """A stand-in for an overloaded vLLM server (a GPU server cannot run here): at most ``capacity``
    requests are served at once, the rest get 429 + ``Retry-After`` as vLLM's front ends answer.
    Embeddings are deterministic functions of the text, so order and content are checkable."""
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app, state = FastAPI(), {"in_flight": 0, "peak": 0, "rejected": 0, "served": 0}

    def vec(text: str) -> list[float]:
        return np.random.default_rng(sum(map(ord, text))).standard_normal(8).tolist()

    @app.post("/v1/embeddings")
    async def embeddings(body: dict):
        if state["in_flight"] >= capacity:
            state["rejected"] += 1
            return JSONResponse({"error": {"message": "server busy"}}, status_code=429, headers={"Retry-After": "0"})
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        try:
            await asyncio.sleep(delay_s)
            state["served"] += 1
            return {"data": [{"index": i, "embedding": vec(t)} for i, t in enumerate(body["input"])]}
        finally:
            state["in_flight"] -= 1

    return app, state, vec


def test_overloaded_server_shrinks_requests_in_flight():
    """8 requests allowed in flight against a server that serves 2: AIMD backs off instead of failing."""
    app, state, vec = _capacity_server(capacity=2)
    texts = [f"item {i}" for i in range(120)]  # 40 batches of 3
    with serve(app) as url:
        backbone = client(url, concurrency=8, max_retries=4)
        emb = backbone.encode(texts)
    np.testing.assert_allclose(emb, np.asarray([vec(t) for t in texts], dtype=np.float32), atol=1e-6)
    assert state["served"] == 40 and state["peak"] <= 2
    assert backbone.limit.decreases >= 1 and backbone.limit.limit < 8  # it learnt to send less
    assert state["rejected"] < 40  # without backoff every batch would be rejected several times


def test_in_flight_limit_is_aimd():
    from llm_cloud.backbones.openai_http import InFlightLimit

    lim = InFlightLimit(8)
    lim.acquire()
    lim.release(overloaded=True)
    assert lim.limit == 4
    for _ in range(4):
        lim.acquire()
        lim.release(overloaded=False)
    assert lim.limit == 5 and lim.peak == 1
    for _ in range(5):
        lim.acquire()
        lim.release(overloaded=True)
    assert lim.limit == 1  # never below one request in flight
