"""Bad input gets a 4xx whose message names the field (never a 5xx); odd but valid input gets a sensible 200."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.serving.conftest import API_KEY, AUTH, RandomEditor, device_and_cloud


@pytest.fixture(scope="module")
def services(checkpoint, runtime, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-input")
    with device_and_cloud(checkpoint, runtime, tmp, "serve.http.max_body_bytes=200000") as (device, cloud):
        with httpx.Client(timeout=30, auth=OperatorOn(device.url)) as client:
            yield device.url, cloud.url, client


class OperatorOn(httpx.Auth):
    """The device's operator key on requests to ``url`` that carry no credential of their own (the cloud's routes
    here are called with or without the cloud key, as each test says)."""

    def __init__(self, url: str):
        self.url = url

    def auth_flow(self, request: httpx.Request):
        if str(request.url).startswith(self.url) and not {"authorization", "x-api-key"} & set(request.headers):
            request.headers.update(AUTH)
        yield request


def catalogue(runtime) -> int:
    return runtime.n_items - 1


def assert_names(resp: httpx.Response, status: int, field: str) -> None:
    assert resp.status_code == status, resp.text
    assert field in resp.json()["message"], resp.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u", "k": 0}, "k"),
        ({"user_id": "u", "k": -3}, "k"),
        ({"user_id": "u", "k": "ten"}, "k"),
        ({"user_id": "u", "k": 1.5}, "k"),
        ({"user_id": ["u"]}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"history": "50"}, "history"),
        ({"history": [{"id": 50}]}, "history.0"),
        ({"history": ["50"] * 10_001}, "history"),
        ({"history": ["50"], "exclude": 3}, "exclude"),
        ({"history": ["50"], "exclude_seen": "maybe"}, "exclude_seen"),
        ({"history": ["50"], "colour": "red"}, "colour"),
        ({"user_id": 7}, "user_id"),
        ({"history": [50]}, "history.0"),
        ({"user_id": "u\ud800"}, "user_id"),
    ],
)
def test_rank_rejects_bad_fields(services, body, field):
    device, _, c = services
    raw = json.dumps(body)  # ASCII JSON: a lone surrogate travels as its \\u escape
    assert_names(c.post(f"{device}/v1/rank", content=raw, headers={"content-type": "application/json"}), 422, field)


def test_k_above_catalogue(services, runtime):
    device, _, c = services
    n = catalogue(runtime)
    assert_names(c.post(f"{device}/v1/rank", json={"history": [], "k": n + 1}), 422, "k")
    full = c.post(f"{device}/v1/rank", json={"history": ["50", "172"], "k": n}).json()
    assert len(full["items"]) == n - 2  # everything but the two seen items


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": []}, "events"),
        ({"events": {}}, "events"),
        ({"events": [{"user_id": "u", "item_id": "50"}]}, "events.0.event_id"),
        ({"events": [{"event_id": "e", "user_id": "u", "item_id": {}}]}, "events.0.item_id"),
        ({"events": [{"event_id": "e", "user_id": "u", "item_id": "5", "timestamp": -1}]}, "events.0.timestamp"),
        ({"events": [{"event_id": "e", "user_id": "u", "item_id": "5", "timestamp": "noon"}]}, "events.0.timestamp"),
        ({"events": [{"event_id": "e" * 300, "user_id": "u", "item_id": "5"}]}, "events.0.event_id"),
        ({"events": [{"event_id": "e", "user_id": "u\x00", "item_id": "5"}]}, "events.0.user_id"),
        ({"events": [{"event_id": str(i), "user_id": "u", "item_id": "5"} for i in range(1001)]}, "events"),
    ],
)
def test_events_reject_bad_fields(services, body, field):
    device, _, c = services
    assert_names(c.post(f"{device}/v1/events", json=body), 422, field)


@pytest.mark.parametrize("path", ["/v1/rank", "/v1/events"])
@pytest.mark.parametrize("raw", [b'{"user_id": "u", "k": ', b"not json", b"[1, 2]", b"", b"\xff\xfe"])
def test_malformed_json_is_422(services, path, raw):
    device, _, c = services
    resp = c.post(f"{device}{path}", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["message"], resp.text


def test_unknown_user_gets_a_cold_start_ranking(services, runtime):
    device, _, c = services
    body = c.post(f"{device}/v1/rank", json={"user_id": "never-seen", "k": 10}).json()
    assert body["adaptation"] == "cloud-edit"  # the cloud's edit for an empty history
    editor = RandomEditor(runtime.model.head.dim, len(runtime.model.head.layers))
    cold, _ = runtime.rank([], 10, edit=editor.edit([]).head_edit())
    assert [it["item_id"] for it in body["items"]] == [str(runtime.item_tokens[i]) for i in cold]
    assert body["history_length"] == 0
    anonymous = c.post(f"{device}/v1/rank", json={"k": 10}).json()  # neither user nor history: cold start too
    assert anonymous["items"] == body["items"]


def test_unknown_item_ids_are_ignored_and_listed(services, runtime):
    device, _, c = services
    body = c.post(f"{device}/v1/rank", json={"history": ["50", "no-such-item", "99999"], "exclude": ["zz"]}).json()
    assert body["unknown_items"] == ["99999", "no-such-item", "zz"] and body["history_length"] == 1
    events = [{"event_id": "x1", "user_id": "carol", "item_id": "no-such-item"}]
    assert c.post(f"{device}/v1/events", json={"events": events}).json()["unknown_items"] == ["no-such-item"]


def test_empty_and_10000_item_histories(services, runtime):
    device, _, c = services
    empty = c.post(f"{device}/v1/rank", json={"history": [], "k": 3})
    assert empty.status_code == 200 and len(empty.json()["items"]) == 3
    tokens = [str(runtime.item_tokens[1 + i % catalogue(runtime)]) for i in range(10_000)]
    long = c.post(f"{device}/v1/rank", json={"history": tokens, "k": 3, "exclude_seen": False})
    assert long.status_code == 200 and long.json()["history_length"] == 10_000
    ids = [runtime.token_to_id[t] for t in tokens]
    window = ids[-runtime.model.max_seq_len :]  # the model (and the cloud) read the last max_seq_len items
    editor = RandomEditor(runtime.model.head.dim, len(runtime.model.head.layers))
    assert long.json()["adaptation"] == "cloud-edit"
    want, _ = runtime.rank(ids, 3, edit=editor.edit(window).head_edit())
    assert [it["item_id"] for it in long.json()["items"]] == [str(runtime.item_tokens[i]) for i in want]


def test_oversized_bodies_are_413(services):
    device, cloud, c = services
    big = json.dumps({"history": ["1234567"] * 30_000}).encode()  # ~330 kB > 200 kB limit
    for url in (f"{device}/v1/rank", f"{cloud}/v1/edits"):
        resp = c.post(url, content=big, headers={"content-type": "application/json", "x-api-key": API_KEY})
        assert resp.status_code == 413, resp.text

        def chunks():  # no Content-Length: the limit applies to the streamed bytes
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        resp = c.post(url, content=chunks(), headers={"content-type": "application/json", "x-api-key": API_KEY})
        assert resp.status_code == 413, resp.text


@pytest.mark.parametrize("path", ["/v1/prototypes", "/metrics"])
def test_cloud_needs_the_api_key(services, path):
    _, cloud, c = services
    assert c.get(f"{cloud}{path}").status_code == 401
    assert c.get(f"{cloud}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get(f"{cloud}{path}", headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.get(f"{cloud}{path}", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert c.get(f"{cloud}{path}", headers={"X-API-Key": API_KEY}).status_code == 200


def test_cloud_auth_on_posts_and_health_is_open(services):
    _, cloud, c = services
    assert c.post(f"{cloud}/v1/edits", json={"items": ["50"]}).status_code == 401
    assert c.post(f"{cloud}/admin/reload").status_code == 401
    assert c.post(f"{cloud}/v1/embeddings", json={"input": "hi"}).status_code == 401
    assert c.get(f"{cloud}/healthz").status_code == 200
    # the key before the body: an unauthenticated client learns nothing about the body it sent
    for body in ({}, {"items": "50"}):
        assert c.post(f"{cloud}/v1/edits", json=body).status_code == 401
    bad_json = {"content": b"\xff{", "headers": {"content-type": "application/json"}}
    assert c.post(f"{cloud}/v1/edits", **bad_json).status_code == 401
    assert c.post(f"{cloud}/admin/reload", **bad_json).status_code == 401
    ok = c.post(f"{cloud}/v1/edits", json={"items": ["50", "bogus"]}, headers={"x-api-key": API_KEY})
    assert ok.status_code == 200 and len(ok.json()["layers"]) == 2
    assert_names(c.post(f"{cloud}/v1/edits", json={"items": "50"}, headers={"x-api-key": API_KEY}), 422, "items")


def test_openapi_has_examples(services):
    device, cloud, c = services
    spec = c.get(f"{device}/openapi.json").json()
    assert {"/v1/events", "/v1/rank", "/healthz", "/metrics"} <= set(spec["paths"])
    assert spec["components"]["schemas"]["RankRequest"]["examples"]
    assert spec["components"]["schemas"]["EventsRequest"]["examples"]
    cloud_spec = c.get(f"{cloud}/openapi.json").json()
    assert {"/v1/edits", "/v1/prototypes", "/v1/embeddings", "/admin/reload"} <= set(cloud_spec["paths"])
    assert cloud_spec["components"]["securitySchemes"]


@pytest.mark.parametrize("ts", [1e308, 7_258_118_401, -0.5, "Infinity"])
def test_absurd_timestamps_are_422(services, ts):
    device, _, c = services
    event = {"event_id": "t", "user_id": "u", "item_id": "5", "timestamp": ts}
    raw = json.dumps({"events": [event]}).replace('"Infinity"', "Infinity")  # Python's json reads Infinity
    resp = c.post(f"{device}/v1/events", content=raw, headers={"content-type": "application/json"})
    assert_names(resp, 422, "events.0.timestamp")


def test_past_and_present_timestamps_are_accepted_the_future_beyond_the_skew_is_not(services):
    device, _, c = services
    now = time.time()
    events = [{"event_id": f"ts-{t}", "user_id": "ts-user", "item_id": "50", "timestamp": t}
              for t in (0, 1_700_000_000, now, now + 60)]  # 60 s ahead: within serve.device.max_clock_skew_s (300 s)
    assert c.post(f"{device}/v1/events", json={"events": events}).json()["accepted"] == 4
    for ahead in (4_102_444_800.5, 7_258_118_400, now + 3600):  # 2100, 2200, an hour ahead: each would pin its item
        late = {"event_id": f"late-{ahead}", "user_id": "ts-user", "item_id": "51", "timestamp": ahead}
        resp = c.post(f"{device}/v1/events", json={"events": [events[0], late]})
        assert_names(resp, 409, "events.1.timestamp")
    assert c.post(f"{device}/v1/rank", json={"user_id": "ts-user", "k": 1}).json()["history_length"] == 4


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["param"] == param
    return err


def test_cloud_embeddings_auth_first_and_openai_errors(services):
    _, cloud, c = services
    url = f"{cloud}/v1/embeddings"
    for headers in ({"Authorization": b"Bearer \xff\xfe"}, {"X-API-Key": b"\xff"}, {}):
        assert assert_openai_error(c.post(url, json={"input": "hi"}, headers=headers), 401)["type"] == (
            "authentication_error")
        assert_openai_error(c.post(url, json={}, headers=headers), 401)  # the key before the body
    assert_openai_error(c.post(url, content=b"\xff{", headers={"content-type": "application/json"}), 401)
    key = {"x-api-key": API_KEY}
    assert_openai_error(c.post(url, json={}, headers=key), 422, "input")
    assert_openai_error(c.post(url, json={"input": "hi", "encoding_format": "hex"}, headers=key), 422,
                        "encoding_format")
    assert_openai_error(c.post(url, json={"input": "hi", "model": "gpt-4"}, headers=key), 404, "model")
    assert_openai_error(c.post(url, json={"input": []}, headers=key), 400, "input")
    big = json.dumps({"input": ["x" * 1000] * 300}).encode()  # > serve.http.max_body_bytes (200 kB here)
    assert_openai_error(c.post(url, content=big, headers={**key, "content-type": "application/json"}), 413)
    # the other routes keep their own error shape and also answer 401 to non-ASCII keys
    other = c.get(f"{cloud}/v1/prototypes", headers={"Authorization": b"Bearer \xff\xfe"})
    assert other.status_code == 401 and other.json()["message"] and "error" not in other.json()


def test_cloud_embeddings_openapi_documents_its_answers(services):
    _, cloud, c = services
    op = c.get(f"{cloud}/openapi.json").json()["paths"]["/v1/embeddings"]["post"]
    assert {"200", "400", "401", "404", "413", "422"} <= set(op["responses"])
    assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert op["security"]
