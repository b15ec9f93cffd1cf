"""The OpenAI-compatible ``POST /v1/embeddings`` over real HTTP on 127.0.0.1, stand-alone (schema from the
loaded MiniLM) and in the cloud app (backbone built lazily): text that is not valid Unicode is an OpenAI-shaped
400 naming its parameter, ``dimensions`` accepts exactly what the schema states, the disk cache stays bounded."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from llm_cloud.backbones import CachedBackbone
from llm_cloud.backbones.cache import texts_digest
from serving.embeddings_api import create_embeddings_app
from tests.llm_cloud.helpers import minilm
from tests.serving.conftest import API_KEY, LiveServer, device_and_cloud

WIDTH = 384  # all-MiniLM-L6-v2, the default backbone of both servers
MAX_ENTRIES = 3


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    cache = tmp_path_factory.mktemp("embeddings-cache")
    with LiveServer(create_embeddings_app(CachedBackbone(minilm(), cache, max_entries=MAX_ENTRIES))) as srv:
        with httpx.Client(timeout=60) as client:
            yield srv.url, client, {}, cache


@pytest.fixture(scope="module")
def cloud(checkpoint, runtime, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cloud-embeddings")
    cache = tmp / "embeddings-cache"
    with device_and_cloud(checkpoint, runtime, tmp, f"backbone.cache_dir={cache}") as (_, srv):
        with httpx.Client(timeout=60) as client:
            yield srv.url, client, {"X-API-Key": API_KEY}, cache


@pytest.fixture(params=["standalone", "cloud"])
def server(request):
    return request.getfixturevalue(request.param)


def post_raw(server, body: bytes) -> httpx.Response:
    """``body`` as sent: a JSON ``\\ud800`` escape decodes to a lone surrogate that no client would encode."""
    url, client, headers, _ = server
    return client.post(f"{url}/v1/embeddings", content=body, headers={**headers, "content-type": "application/json"})


def embed(server, **body) -> httpx.Response:
    url, client, headers, _ = server
    return client.post(f"{url}/v1/embeddings", json=body, headers=headers)


@pytest.mark.parametrize("body,param,where", [
    (rb'{"input": "\ud800"}', "input", "'input'"),
    (rb'{"input": ["ok", "x\udc00"]}', "input", "'input[1]'"),
    (rb'{"input": ["ok", "fine", "\udfff\ud800"], "encoding_format": "base64"}', "input", "'input[2]'"),
    (rb'{"input": "ok", "model": "\ud800"}', "model", "'model'"),
    (rb'{"input": "ok", "user": "u\udbff"}', "user", "'user'"),
])
def test_lone_surrogates_are_an_openai_400_naming_the_parameter(server, body, param, where):
    resp = post_raw(server, body)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and err["message"].startswith(f"{where} is not valid Unicode"), err


def test_a_blank_text_is_what_the_schemas_pattern_calls_blank(standalone):
    """The schema's text pattern and the route agree on a blank text, character by character: Python's white space
    (U+001C..U+001F and U+0085 included, which ECMAScript's ``\\S`` would count as text) and nothing else."""
    url, client, _, _ = standalone
    spec = client.get(f"{url}/openapi.json").json()
    request = spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    text = spec["components"]["schemas"][request["$ref"].rsplit("/", 1)[1]]["properties"]["input"]["anyOf"][0]
    pattern = re.compile(text["pattern"])
    assert all((pattern.search(chr(c)) is None) == chr(c).isspace() for c in range(0x3001))
    for text in (" \t\n", "\x1c\x1e", "\u3000\x85"):
        resp = embed(standalone, input=["ok", text])
        assert resp.status_code == 400 and resp.json()["error"]["message"] == "'input[1]' is an empty string"
    assert embed(standalone, input=["ok", "\ufeff"]).status_code == 200  # text to Python, as to the pattern


def dimensions_schema(server) -> dict:
    url, client, _, _ = server
    spec = client.get(f"{url}/openapi.json").json()
    request = spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    name = request["$ref"].rsplit("/", 1)[1]
    (integer,) = [s for s in spec["components"]["schemas"][name]["properties"]["dimensions"]["anyOf"]
                  if s.get("type") == "integer"]
    return integer


def test_schema_states_the_dimensions_the_route_accepts(server, request):
    schema = dimensions_schema(server)
    assert schema["minimum"] == 1
    if request.node.callspec.params["server"] == "standalone":
        assert schema["maximum"] == WIDTH  # built lazily, the cloud's backbone width is not known to its schema
    full = np.asarray(embed(server, input="Heat (1995)").json()["data"][0]["embedding"])
    for dims in (1, 17, WIDTH):
        resp = embed(server, input="Heat (1995)", dimensions=dims)
        assert resp.status_code == 200, resp.text
        vec = np.asarray(resp.json()["data"][0]["embedding"])
        assert vec.shape == (dims,) and np.linalg.norm(vec) == pytest.approx(1, abs=1e-5)
        np.testing.assert_allclose(vec, full[:dims] / np.linalg.norm(full[:dims]), atol=1e-6)
    too_wide = embed(server, input="Heat (1995)", dimensions=WIDTH + 1)
    assert too_wide.status_code == 400 and too_wide.json()["error"]["param"] == "dimensions"
    assert str(WIDTH) in too_wide.json()["error"]["message"]
    for bad in (0, "3", True, 2.5):  # outside the schema: refused with the field named
        assert embed(server, input="Heat", dimensions=bad).json()["error"]["param"] == "dimensions"


def test_distinct_inputs_keep_the_disk_cache_bounded(standalone):
    _, _, _, cache = standalone
    texts = [f"a request never seen before, number {i}" for i in range(2 * MAX_ENTRIES)]
    for text in texts:
        assert embed(standalone, input=text).status_code == 200
        assert len(list(cache.rglob("*.npy"))) <= MAX_ENTRIES
    kept = {p.name for p in cache.rglob("*.npy")}
    assert kept == {f"{texts_digest([t])}.npy" for t in texts[-MAX_ENTRIES:]}  # the least recently used went
