"""serving.device_app: the device service in-process on a tiny real checkpoint, alone (no cloud) — who may call
what (operator key, user tokens), events then a ranking that reads them, the cloud switch, health, the demo page
and the OpenAPI bound on k."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving.artifacts import load_artifacts
from serving.device_app import DeviceService, create_device_app
from serving.metrics import read_samples
from tests.serving.tiny_run import N_ITEMS, tiny_checkpoint, tiny_config

OPERATOR = {"Authorization": "Bearer operator-key"}


@pytest.fixture()
def device(tmp_path, workdir):
    cfg = tiny_config(tmp_path, workdir)
    tiny_checkpoint(cfg)
    service = DeviceService(cfg, load_artifacts(cfg))  # no cloud: the base head (no bank cached)
    with TestClient(create_device_app(service, "operator-key"), base_url="http://127.0.0.1") as client:
        yield client, service


def user_token(client, user: str) -> dict:
    resp = client.post("/v1/tokens", json={"user_id": user, "ttl_s": 600}, headers=OPERATOR)
    assert resp.status_code == 200 and resp.json()["user_id"] == user
    return {"Authorization": f"Bearer {resp.json()['token']}"}


def events(user: str, *items: str) -> dict:
    return {"events": [{"event_id": f"{user}-{i}", "user_id": user, "item_id": item, "timestamp": 1e9 + i}
                       for i, item in enumerate(items)]}


def test_health_is_open_and_says_the_device_serves_alone(device):
    client, _ = device
    health = client.get("/healthz").json()
    assert (health["service"], health["n_items"], health["cloud_url"], health["prototypes"]) == ("device", N_ITEMS - 1,
                                                                                                 None, 0)
    assert client.post("/v1/rank", json={"k": 3}).status_code == 401
    assert client.get("/metrics").status_code == 401


def test_events_then_a_ranking_of_the_users_history(device):
    client, _ = device
    alice = user_token(client, "alice")
    stored = client.post("/v1/events", json=events("alice", "1", "2", "3", "999"), headers=alice).json()
    assert (stored["accepted"], stored["duplicates"], stored["unknown_items"]) == (4, 0, ["999"])
    assert client.post("/v1/events", json=events("alice", "1"), headers=alice).json()["duplicates"] == 1
    ranked = client.post("/v1/rank", json={"user_id": "alice", "k": 5}, headers=alice).json()
    assert ranked["adaptation"] == "base" and ranked["history_length"] == 3 and len(ranked["items"]) == 5
    assert not {"1", "2", "3"} & {i["item_id"] for i in ranked["items"]}  # seen items left out
    scores = [i["score"] for i in ranked["items"]]
    assert scores == sorted(scores, reverse=True)
    titled = client.post("/v1/rank", json={"history": ["50"], "k": 60, "exclude_seen": False}, headers=OPERATOR)
    assert {i["item_id"]: i["title"] for i in titled.json()["items"]}["1"] == "Toy Story"


def test_a_user_token_covers_its_own_user_only(device):
    client, _ = device
    bob = user_token(client, "bob")
    refused = client.post("/v1/events", json=events("carol", "1"), headers=bob)
    assert refused.status_code == 403 and refused.json()["message"].startswith("events.0.user_id:")
    assert client.post("/v1/rank", json={"user_id": "carol"}, headers=bob).status_code == 403
    assert client.post("/v1/tokens", json={"user_id": "bob"}, headers=bob).status_code == 403
    assert client.put("/v1/cloud", json={"enabled": False}, headers=bob).status_code == 403
    assert client.get("/metrics", headers=bob).status_code == 403


def test_the_operator_switches_the_cloud_and_reads_the_metrics(device):
    client, service = device
    assert client.put("/v1/cloud", json={"enabled": False}, headers=OPERATOR).json()["service"] == "device"
    client.post("/v1/rank", json={"history": ["1"], "k": 2}, headers=OPERATOR)
    samples = read_samples(client.get("/metrics", headers=OPERATOR).text)
    ranked = [v for n, lab, v in samples if n == "persona_requests_total" and lab["route"] == "/v1/rank"]
    assert ranked == [1.0]
    assert service.batcher.stats.batches == 1


def test_the_demo_page_and_the_openapi_bound_on_k(device):
    client, _ = device
    page = client.get("/")
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    schema = client.get("/openapi.json").json()
    assert schema["components"]["schemas"]["RankRequest"]["properties"]["k"]["maximum"] == N_ITEMS - 1
    assert client.post("/v1/rank", json={"history": ["1"], "k": N_ITEMS}, headers=OPERATOR).status_code == 422


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_a_bert4rec_checkpoint_is_served_as_it_ranks_offline(tmp_path, workdir, runtime):
    """The third device model through the same service: the live ranking equals the runtime's offline one."""
    from recsys.checkpoint import load_checkpoint
    from recsys.runtime import DeviceRuntime

    cfg = tiny_config(tmp_path, workdir, "model=bert4rec", f"serve.device.runtime={runtime}")
    tiny_checkpoint(cfg)
    model, _, tokens = load_checkpoint(cfg.serve.checkpoint)
    assert model.spec.name == "bert4rec"
    expected = DeviceRuntime(model, tokens).rank([1, 2, 3], 5, exclude={1, 2, 3})[0]
    service = DeviceService(cfg, load_artifacts(cfg))
    with TestClient(create_device_app(service, "operator-key"), base_url="http://127.0.0.1") as client:
        alice = user_token(client, "alice")
        client.post("/v1/events", json=events("alice", "1", "2", "3"), headers=alice)
        ranked = client.post("/v1/rank", json={"user_id": "alice", "k": 5}, headers=alice).json()
    assert [i["item_id"] for i in ranked["items"]] == [str(tokens[i]) for i in expected]
