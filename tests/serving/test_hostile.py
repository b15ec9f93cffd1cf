"""A hostile client against the live device and cloud on 127.0.0.1 (docs/security.md): each case that once got
through is a regression test here. Connection floods are in test_connections.py, the embeddings route's bad text
in test_embeddings_api.py, the CLI's refusal of an open bind in test_cli.py."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from serving.auth import Credentials
from tests.serving.conftest import API_KEY, AUTH, device_and_cloud

MAX_UNKNOWN = 40


@pytest.fixture(scope="module")
def live(checkpoint, runtime, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    with device_and_cloud(checkpoint, runtime, tmp, f"serve.device.max_unknown_items={MAX_UNKNOWN}") as (device, cloud):
        with httpx.Client(timeout=30) as client:
            yield device.url, cloud.url, client


def token(client: httpx.Client, device: str, user: str) -> dict:
    resp = client.post(f"{device}/v1/tokens", json={"user_id": user}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['token']}"}


def events(user: str, *items: str, prefix: str = "e") -> dict:
    return {"events": [{"event_id": f"{prefix}{i}", "user_id": user, "item_id": t} for i, t in enumerate(items)]}


DEVICE_ROUTES = [  # (method, path, body): every device route that reads a user's data or changes state
    ("POST", "/v1/events", events("victim", "50")),
    ("POST", "/v1/rank", {"user_id": "victim", "k": 3}),
    ("POST", "/v1/rank", {"history": ["50"], "k": 3}),
    ("POST", "/v1/tokens", {"user_id": "victim"}),
    ("PUT", "/v1/cloud", {"enabled": False}),
    ("GET", "/metrics", None),
]
CLOUD_ROUTES = [
    ("POST", "/v1/edits", {"items": ["50"]}),
    ("GET", "/v1/prototypes", None),
    ("POST", "/v1/embeddings", {"input": "hi"}),
    ("POST", "/admin/reload", None),
    ("GET", "/metrics", None),
]


def call(client, url, method, path, body, headers=None) -> httpx.Response:
    return client.request(method, f"{url}{path}", json=body, headers=headers or {})


@pytest.mark.parametrize(("method", "path", "body"), DEVICE_ROUTES)
def test_device_refuses_callers_without_a_valid_credential(live, method, path, body):
    device, _, c = live
    forged = Credentials("not-the-operator-key").issue("victim", 3600)[0]
    expired = Credentials(API_KEY).issue("victim", 60, now=time.time() - 3600)[0]
    valid = Credentials(API_KEY).issue("victim", 3600)[0]
    tampered = valid[:-2] + ("AA" if not valid.endswith("AA") else "BB")
    bearer = [{"Authorization": f"Bearer {t}"} for t in ("wrong", forged, expired, tampered, "pt1.%%%.1.x")]
    for headers in ({}, {"X-API-Key": "wrong"}, *bearer):
        resp = call(c, device, method, path, body, headers)
        assert resp.status_code == 401, (headers, resp.text)
        assert resp.headers["www-authenticate"] == "Bearer"
    bad_json = c.request(method, f"{device}{path}", content=b"\xff{", headers={"content-type": "application/json"})
    assert bad_json.status_code == 401  # the credential before the body: nothing learnt about the body


@pytest.mark.parametrize(("method", "path", "body"), CLOUD_ROUTES)
def test_cloud_refuses_callers_without_its_key(live, method, path, body):
    device, cloud, c = live
    user = token(c, device, "someone")
    for headers in ({}, {"Authorization": "Bearer wrong"}, user):  # a device user token is no cloud key
        assert call(c, cloud, method, path, body, headers).status_code == 401


def test_a_user_token_covers_its_user_only(live):
    device, _, c = live
    alice, mallory = token(c, device, "alice"), token(c, device, "mallory")
    assert c.post(f"{device}/v1/events", json=events("alice", "50", "172"), headers=alice).json()["accepted"] == 2
    mine = c.post(f"{device}/v1/rank", json={"user_id": "alice", "k": 5}, headers=alice)
    assert mine.status_code == 200 and mine.json()["history_length"] == 2
    # the exclude_seen difference that recovered a victim's seen set, and writes in the victim's name
    for body in ({"user_id": "alice", "k": 1682, "exclude_seen": False}, {"user_id": "alice", "k": 5}):
        resp = c.post(f"{device}/v1/rank", json=body, headers=mallory)
        assert resp.status_code == 403 and resp.json()["message"].startswith("user_id:"), resp.text
    mixed = {"events": events("mallory", "1")["events"] + events("alice", "2", prefix="m")["events"]}
    resp = c.post(f"{device}/v1/events", json=mixed, headers=mallory)
    assert resp.status_code == 403 and resp.json()["message"].startswith("events.1.user_id:")
    assert c.post(f"{device}/v1/rank", json={"user_id": "mallory", "k": 1}, headers=mallory).json()[
        "history_length"] == 0  # the refused request stored nothing
    # operator controls stay with the operator
    for method, path, body in [("PUT", "/v1/cloud", {"enabled": False}), ("POST", "/v1/tokens", {"user_id": "alice"}),
                               ("GET", "/metrics", None)]:  # fmt: skip
        resp = call(c, device, method, path, body, mallory)
        assert resp.status_code == 403 and "operator key" in resp.json()["message"], resp.text
    assert c.get(f"{device}/healthz").json()["cloud_enabled"] is True


def test_event_ids_are_scoped_per_user_and_a_changed_resend_is_409(live):
    device, _, c = live
    victim, other = token(c, device, "v"), token(c, device, "o")
    assert c.post(f"{device}/v1/events", json=events("o", "50", prefix="V-"), headers=other).json()["accepted"] == 1
    # the victim's own event with the same id is not turned into a silent duplicate by another user's event
    mine = c.post(f"{device}/v1/events", json=events("v", "172", prefix="V-"), headers=victim).json()
    assert (mine["accepted"], mine["duplicates"]) == (1, 0)
    again = c.post(f"{device}/v1/events", json=events("v", "172", prefix="V-"), headers=victim).json()
    assert (again["accepted"], again["duplicates"]) == (0, 1)  # an exact re-send stays a no-op
    changed = c.post(f"{device}/v1/events", json=events("v", "181", "7", prefix="V-"), headers=victim)
    assert changed.status_code == 409 and "V-0" in changed.json()["message"], changed.text
    assert c.post(f"{device}/v1/rank", json={"user_id": "v", "k": 1}, headers=victim).json()["history_length"] == 1


def test_future_timestamps_cannot_pin_an_item(live):
    device, _, c = live
    user = token(c, device, "pinned")
    pin = {"events": [{"event_id": "p", "user_id": "pinned", "item_id": "50", "timestamp": 7_258_118_400}]}
    resp = c.post(f"{device}/v1/events", json=pin, headers=user)
    assert resp.status_code == 409 and resp.json()["message"].startswith("events.0.timestamp:")


def test_unknown_items_are_bounded_per_user_and_in_answers(live, runtime):
    device, _, c = live
    user = token(c, device, "hoarder")
    fill = [f"my-private-note-{i}" for i in range(MAX_UNKNOWN)]
    assert c.post(f"{device}/v1/events", json=events("hoarder", *fill), headers=user).json()["accepted"] == MAX_UNKNOWN
    over = c.post(f"{device}/v1/events", json=events("hoarder", "50", "one-too-many", prefix="x"), headers=user)
    assert over.status_code == 409 and over.json()["message"].startswith("events.1.item_id:"), over.text
    # known items and already-stored unknown ones still go in
    ok = c.post(f"{device}/v1/events", json=events("hoarder", "50", fill[0], prefix="y"), headers=user)
    assert ok.status_code == 200 and ok.json()["accepted"] == 2
    answer = c.post(f"{device}/v1/rank", json={"user_id": "hoarder", "k": 3, "history": [f"h{i}" for i in range(500)]},
                    headers=user)  # fmt: skip
    body = answer.json()
    assert answer.status_code == 200 and len(body["unknown_items"]) == 100 and body["history_length"] == 1
    assert len(answer.content) < 8_000  # the answer does not grow with what the user stored or sent


@pytest.mark.parametrize("which", ["device", "cloud"])
def test_foreign_host_headers_are_refused(live, which):
    device, cloud, c = live
    url, headers = (device, AUTH) if which == "device" else (cloud, {"X-API-Key": API_KEY})
    rebinding = {**headers, "Host": "attacker.example"}
    assert c.get(f"{url}/healthz", headers=rebinding).status_code == 400
    if which == "device":
        assert c.put(f"{url}/v1/cloud", json={"enabled": False}, headers=rebinding).status_code == 400
        assert c.get(f"{url}/healthz").json()["cloud_enabled"] is True
    assert c.get(f"{url}/healthz", headers={"Host": "localhost"}).status_code == 200


def test_cors_is_closed_and_the_page_cannot_be_framed(live):
    device, _, c = live
    preflight = c.options(f"{device}/v1/rank", headers={"Origin": "https://evil.example",
                                                        "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in preflight.headers
    answer = c.post(f"{device}/v1/rank", json={"history": ["50"]}, headers={**AUTH, "Origin": "https://evil.example"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["cache-control"] == "no-store"
    page = c.get(f"{device}/")
    csp = page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in csp
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp and "connect-src 'self'" in csp


def test_no_redirect_reflects_the_host_and_docs_are_off(live):
    device, cloud, c = live
    for url in (device, cloud):
        resp = c.post(f"{url}/v1/rank/", json={}, headers={**AUTH, "Host": "localhost"}, follow_redirects=False)
        assert resp.status_code in (401, 404) and "location" not in resp.headers
        assert c.get(f"{url}/docs").status_code == 404
        assert c.get(f"{url}/openapi.json").status_code == 200  # the schema is public (it holds no data)


def test_openapi_states_who_may_call(live):
    device, _, c = live
    spec = c.get(f"{device}/openapi.json").json()
    for path, method in [("/v1/events", "post"), ("/v1/rank", "post"), ("/v1/tokens", "post"), ("/v1/cloud", "put")]:
        op = spec["paths"][path][method]
        assert op.get("security") and {"401", "403"} <= set(op["responses"]), (path, json.dumps(op)[:300])


def test_one_user_cannot_take_the_worker_429_before_the_body(live):
    device, _, c = live
    spammer, other = token(c, device, "spammer"), token(c, device, "bystander")
    codes = [c.post(f"{device}/v1/rank", json={"history": ["50"], "k": 1}, headers=spammer).status_code
             for _ in range(60)]  # burst 40 at 20/s: these 60 come far faster
    assert codes.count(200) >= 40 and codes.count(429) >= 10, codes
    refused = c.post(f"{device}/v1/events", content=b"\xff not even json", headers={**spammer,
                                                                                 "content-type": "application/json"})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1  # refused before the body
    assert c.post(f"{device}/v1/rank", json={"user_id": "bystander", "k": 1}, headers=other).status_code == 200
    assert c.post(f"{device}/v1/rank", json={"history": ["50"], "k": 1}, headers=AUTH).status_code == 200
