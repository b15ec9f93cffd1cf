"""The replay's client (serving.replay_client) against live services on 127.0.0.1: the rank it records is the
target's place in what the device served, a condition's numbers come from recsys.metrics and the device's own
/metrics, and a real `persona serve --role device` replayed through the emulated link counts its edits' bytes."""

from __future__ import annotations

import asyncio
import math

import httpx
import numpy as np
import pytest

from recipes.replay import K, Rows
from serving.replay_client import Outcome, condition_result, device_metrics, lanes_of, replay, run_condition
from tests.serving.conftest import API_KEY, AUTH, LiveServer, RandomEditor, device_and_cloud, serve_config, wait_for


def rows_of(user: list[str], target: list[str], history: dict[str, list[str]]) -> Rows:
    none = np.zeros(len(user), dtype=int)
    return Rows(user, target, history, none, none, None, "ml-100k", len(history), 1.0)


def test_lanes_keep_each_users_rows_on_one_lane_in_order():
    rows = rows_of(["a", "b", "a", "c", "b", "a"], ["1"] * 6, {"a": [], "b": [], "c": []})
    assert lanes_of(rows, 2) == [[0, 2, 3, 5], [1, 4]]  # a and c on lane 0, b on lane 1
    assert lanes_of(rows, 8)[2:] == [[3], [], [], [], [], []]


def test_a_conditions_numbers():
    outcome = Outcome(ranks=[0, 1, K, 3], kinds=["cloud-edit", "cloud-edit", "prototype-cache", "error"],
                      latency=[0.010, 0.030, 0.020, 0.040], errors=1)  # fmt: skip
    found = {"edits:ok": 2.0, "edits:timeout": 1.0, "fallback:timeout": 1.0, "ask:asked": 3.0}
    got = condition_result("exact", ["serve.device.refresh_every=1"], outcome, found, {"up": 1000, "down": 600}, 1.234)
    assert got["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)
    assert got["hit@10"] == 0.75 and got["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 4)
    assert got["adaptation"] == {"cloud-edit": 0.5, "prototype-cache": 0.25, "base": 0.0, "error": 0.25}
    assert got["cloud_requests_per_event"] == 0.75  # 3 edit requests over 4 rows
    assert got["edit_requests"] == {"ok": 2.0, "timeout": 1.0} and got["fallbacks"] == {"timeout": 1.0}
    assert got["policy"] == {"asked": 3.0}
    assert got["downlink_bytes_per_edit"] == 300.0 and got["uplink_bytes_per_edit"] == 500.0  # per answered edit
    assert got["p50_ms"] == 30.0 and got["p99_ms"] == 40.0 and got["non_200"] == 1 and got["seconds"] == 1.2
    assert got["ranks"] == [0, 1, K, 3] and got["overrides"] == ["serve.device.refresh_every=1"]
    dead = condition_result("cloud-down", [], Outcome([K], ["base"], [0.001]), {}, {"up": 0, "down": 0}, 0.1)
    assert dead["downlink_bytes_per_edit"] is None and dead["cloud_requests_per_event"] == 0.0


def test_the_replay_records_the_targets_place_in_what_was_served(checkpoint, runtime, tmp_path):
    tokens = [str(t) for t in runtime.item_tokens]
    history = {"u1": tokens[5:12], "u2": tokens[40:44], "u3": tokens[100:109]}
    with device_and_cloud(checkpoint, runtime, tmp_path) as (device, _), httpx.Client(timeout=30, headers=AUTH) as c:
        wait_for(lambda: c.get(f"{device.url}/healthz").json()["prototypes"] == 3)
        assert c.put(f"{device.url}/v1/cloud", json={"enabled": False}).status_code == 200  # deterministic: the bank
        served = {}
        for u, items in history.items():  # the replay's own first events (it re-sends them: stored once)
            events = [{"event_id": f"{u}-h{i}", "user_id": u, "item_id": t, "timestamp": i + 1}
                      for i, t in enumerate(items)]  # fmt: skip
            c.post(f"{device.url}/v1/events", json={"events": events}).raise_for_status()
            answer = c.post(f"{device.url}/v1/rank", json={"user_id": u, "k": K, "exclude_seen": False}).json()
            served[u] = [it["item_id"] for it in answer["items"]]
        outside = next(t for t in tokens[1:] if t not in served["u3"])
        rows = rows_of(["u1", "u2", "u3"], [served["u1"][3], served["u2"][0], outside], history)
        outcome = asyncio.run(replay(device.port, rows, 2, "test", API_KEY))
        found = device_metrics(device.port, API_KEY)
        after = c.post(f"{device.url}/v1/rank", json={"user_id": "u1", "k": 1}).json()
    assert outcome.ranks == [3, 0, K] and outcome.errors == 0
    assert outcome.kinds == ["prototype-cache"] * 3 and len(outcome.latency) == 3
    assert after["history_length"] == len(history["u1"]) + 1  # the history once, then the row's target
    assert not any(k.startswith("edits:") for k in found)  # the cloud was cut: no edit asked


def test_a_real_device_replayed_through_the_link(checkpoint, runtime, tmp_path):
    """``persona serve --role device`` in its own process, its cloud (the test double editor) behind the link."""
    from serving.cloud_app import CloudService, create_cloud_app

    ckpt, workdir = checkpoint
    cfg = serve_config(checkpoint, tmp_path)
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    cloud = CloudService(cfg, ckpt, lambda: RandomEditor(dim, n_layers))
    tokens = [str(t) for t in runtime.item_tokens]
    history = {"u1": tokens[5:12], "u2": tokens[40:44]}
    rows = rows_of(["u1", "u2", "u1", "u2"], [tokens[60], tokens[61], tokens[62], tokens[63]], history)
    device = [f"serve.checkpoint={ckpt}", f"data.workdir={workdir}", f"serve.device.db_path={tmp_path / 'events.db'}",
              f"serve.device.prototype_cache={tmp_path / 'prototypes.json'}", f"serve.api_key={API_KEY}",
              f"serve.operator_key={API_KEY}"]  # fmt: skip
    with LiveServer(create_cloud_app(cloud, API_KEY)) as cl:
        got = run_condition("exact", ["serve.device.refresh_every=1", "serve.device.budget_ms=10000"], rows, 2, API_KEY,
                            tmp_path / "device.log", device, cl.port, (0.005, None))  # fmt: skip
    assert got["rows"] == 4 and got["non_200"] == 0 and len(got["ranks"]) == 4
    assert got["adaptation"]["cloud-edit"] == 1.0  # every row asked the cloud, within the long budget
    assert got["edit_requests"].get("ok", 0) >= 4 and got["cloud_requests_per_event"] >= 1.0
    assert got["downlink_bytes_per_edit"] > 100  # the edit responses, measured on the link
    assert got["overrides"] == ["serve.device.refresh_every=1", "serve.device.budget_ms=10000"]


def test_the_exact_replay_equals_the_offline_served_method_on_every_row(checkpoint, runtime, tmp_path):
    """The README's claim, small: ml-100k test rows (2 % of the users) replayed through the live device asking the
    real cloud editor (adapter + bank) on every event rank every target as ``served`` does offline."""
    from recipes.replay import load_rows, metrics_of, row_by_row
    from serving.artifacts import load_artifacts
    from serving.cloud_app import CloudService, create_cloud_app
    from serving.device_app import DeviceService, create_device_app
    from tests.serving.conftest import real_editor_checkpoint

    ckpt = real_editor_checkpoint(checkpoint, runtime, tmp_path)
    cfg = serve_config((ckpt, checkpoint[1]), tmp_path, "serve.device.refresh_every=1", "serve.device.budget_ms=10000")
    rows = load_rows(cfg, ckpt, 0.02, seed=0)
    assert rows.consistent > 0.95 and len(rows.user) > 20
    assert (rows.served_rank != rows.static_rank).any()  # the adapter's edit moves targets: the check can fail
    with LiveServer(create_cloud_app(CloudService(cfg, ckpt), API_KEY)) as cl, httpx.Client(timeout=30) as c:
        device = DeviceService(cfg, load_artifacts(cfg), cl.url, API_KEY)
        with LiveServer(create_device_app(device, API_KEY)) as dev:
            wait_for(lambda: c.get(f"{dev.url}/healthz").json()["prototypes"] == 3, timeout=30)
            outcome = asyncio.run(replay(dev.port, rows, 4, "exact", API_KEY))
    assert outcome.errors == 0 and set(outcome.kinds) == {"cloud-edit"}
    compared = row_by_row(outcome.ranks, rows.served_rank)
    assert compared["same_rank"] == 1.0, compared
    assert metrics_of(outcome.ranks) == metrics_of(np.minimum(rows.served_rank, K))
