"""Device and cloud services over real HTTP on 127.0.0.1: events, ranking, cloud edits, fallbacks, reload."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from recsys.wire import EditPayload, PrototypeSnapshot
from serving.artifacts import load_artifacts
from serving.cloud_app import CloudService, create_cloud_app
from serving.cloud_client import Breaker, CloudClient
from serving.device_app import DeviceService, create_device_app
from serving.metrics import Metrics, read_samples
from tests.serving.conftest import API_KEY, AUTH, LiveServer, RandomEditor, random_edit, rank, serve_config, wait_for


def device_app(cfg, cloud_url=None):
    return create_device_app(DeviceService(cfg, load_artifacts(cfg), cloud_url, API_KEY), API_KEY)


def cloud_app(cfg, editor_factory):
    service = CloudService(cfg, cfg.serve.checkpoint, editor_factory)
    return create_cloud_app(service, API_KEY), service


def metric(text: str, name: str, **labels) -> float:
    """Value of the sample ``name`` with (at least) these labels in Prometheus text; 0 when absent."""
    for sample, have, value in read_samples(text):
        if sample == name and all(have.get(k) == str(v) for k, v in labels.items()):
            return value
    return 0.0


def post_events(client, url, user, items, start=0):
    events = [{"event_id": f"{user}-{start + i}", "user_id": user, "item_id": t} for i, t in enumerate(items)]
    resp = client.post(f"{url}/v1/events", json={"events": events})
    assert resp.status_code == 200, resp.text
    return resp.json()


def ids_of(runtime, tokens):
    return [runtime.token_to_id[t] for t in tokens]


def test_events_then_rank_reflects_the_new_events(checkpoint, runtime, tmp_path):
    cfg = serve_config(checkpoint, tmp_path)
    tokens = [str(t) for t in runtime.item_tokens[[50, 172, 181, 7, 300]]]
    with LiveServer(device_app(cfg)) as dev, httpx.Client(timeout=10, headers=AUTH) as c:
        before = rank(c, dev.url, user_id="alice", k=10).json()
        assert before["adaptation"] == "base" and before["history_length"] == 0
        cold_ids, _ = runtime.rank([], 10)
        assert [it["item_id"] for it in before["items"]] == [str(runtime.item_tokens[i]) for i in cold_ids]

        assert post_events(c, dev.url, "alice", tokens) == {"accepted": 5, "duplicates": 0, "unknown_items": []}
        assert post_events(c, dev.url, "alice", tokens) == {"accepted": 0, "duplicates": 5, "unknown_items": []}

        after = rank(c, dev.url, user_id="alice", k=10).json()
        ids = ids_of(runtime, tokens)
        want, want_scores = runtime.rank(ids, 10, exclude=set(ids))
        got = [it["item_id"] for it in after["items"]]
        assert after["history_length"] == 5 and after["adaptation"] == "base"
        assert got == [str(runtime.item_tokens[i]) for i in want]
        assert [it["score"] for it in after["items"]] == pytest.approx(want_scores, rel=1e-5)
        assert not set(got) & set(tokens) and got != [it["item_id"] for it in before["items"]]
        assert all(it["title"] for it in after["items"])  # ml-100k titles come along

        # an explicit history is appended after the stored events; exclude_seen=False may return seen items
        more = rank(c, dev.url, user_id="alice", history=["1"], k=10, exclude_seen=False).json()
        want, _ = runtime.rank([*ids, runtime.token_to_id["1"]], 10)
        assert [it["item_id"] for it in more["items"]] == [str(runtime.item_tokens[i]) for i in want]

        text = c.get(f"{dev.url}/metrics").text
        assert metric(text, "persona_events_total", result="inserted") == 5
        assert metric(text, "persona_events_total", result="duplicate") == 5
        labels = {"service": "device", "route": "/v1/rank", "method": "POST", "status": "200"}
        assert metric(text, "persona_requests_total", **labels) == 3
        assert "persona_request_seconds_bucket" in text


def test_cloud_edit_fallback_to_prototype_cache_and_resume(checkpoint, runtime, tmp_path):
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    editor = RandomEditor(dim, n_layers)
    # Wall-clock bounds only where load cannot break them: a 500 ms budget for the loopback cloud's
    # answers, a slow cloud 4x slower than that, and "answered before the slow cloud could" as the bound.
    cfg = serve_config(checkpoint, tmp_path, "serve.device.budget_ms=500")
    capp, _ = cloud_app(cfg, lambda: editor)
    budget = cfg.serve.device.budget_ms / 1e3
    slow_s = 4 * budget
    items = [str(t) for t in runtime.item_tokens[1:40]]

    def expect(resp, ids, edit):
        want, _ = runtime.rank(ids, 10, exclude=set(ids), edit=edit)
        assert [it["item_id"] for it in resp["items"]] == [str(runtime.item_tokens[i]) for i in want]

    bank = editor.snapshot()
    local = runtime.__class__(runtime.model, runtime.item_tokens)
    local.set_prototypes(bank)

    cloud_srv = LiveServer(capp)
    try:
        with LiveServer(device_app(cfg, cloud_srv.url)) as dev, httpx.Client(timeout=10, headers=AUTH) as c:
            wait_for(lambda: c.get(f"{dev.url}/healthz").json()["prototypes"] == 3)
            cache = tmp_path / "prototypes.json"  # written to disk just after the bank is taken into memory
            wait_for(lambda: cache.is_file() and PrototypeSnapshot.load(cache).version == editor.version)

            # 1. cloud answers within budget → its edit is used
            post_events(c, dev.url, "bob", items[:4])
            resp = rank(c, dev.url, user_id="bob", k=10).json()
            ids = ids_of(runtime, items[:4])
            assert resp["adaptation"] == "cloud-edit" and resp["version"] == editor.version
            expect(resp, ids, editor.edit(ids).head_edit())
            base_ids, _ = runtime.rank(ids, 10, exclude=set(ids))
            assert [it["item_id"] for it in resp["items"]] != [str(runtime.item_tokens[i]) for i in base_ids]
            calls = editor.calls
            rank(c, dev.url, user_id="bob", k=10)  # no new events: the cached edit, no cloud call
            assert editor.calls == calls

            # 2. cloud stopped → 200 within budget from the prototype cache
            cloud_srv.stop()
            post_events(c, dev.url, "bob", items[4:6], start=4)  # refresh_every=2 → wants a new edit
            t0 = time.perf_counter()
            resp = rank(c, dev.url, user_id="bob", k=10)
            elapsed = time.perf_counter() - t0
            ids = ids_of(runtime, items[:6])
            assert resp.status_code == 200 and elapsed < slow_s, elapsed
            body = resp.json()
            k, _ = local.assign(local.user_state(ids))
            assert body["adaptation"] == "prototype-cache" and body["version"] == editor.version
            assert body["prototype_id"] == k
            expect(body, ids, local.prototype_edit(k))

            # 3. cloud back but slower than the budget → same, within budget
            editor.delay_s = slow_s
            cloud_srv = LiveServer(capp, port=cloud_srv.port)
            time.sleep(cfg.serve.device.cloud_retry_s + 0.1)  # the device retries the cloud after cloud_retry_s
            post_events(c, dev.url, "bob", items[6:8], start=6)
            t0 = time.perf_counter()
            resp = rank(c, dev.url, user_id="bob", k=10)
            elapsed = time.perf_counter() - t0
            assert resp.status_code == 200 and elapsed < slow_s, elapsed  # not waiting for the slow answer
            assert elapsed >= budget * 0.9  # it did wait for the (slow) cloud
            assert resp.json()["adaptation"] == "prototype-cache"
            text = c.get(f"{dev.url}/metrics").text
            assert metric(text, "persona_cloud_fallback_total", reason="timeout") >= 1
            assert metric(text, "persona_cloud_fallback_total", reason="error") + metric(
                text, "persona_cloud_fallback_total", reason="unavailable"
            ) >= 1

            # 4. cloud fast again → edits resume
            editor.delay_s = 0.0
            post_events(c, dev.url, "bob", items[8:10], start=8)
            ids = ids_of(runtime, items[:10])
            # step 3's slow request (8 events) is still in flight: the device must not serve its late
            # answer for the current 10-event history, but ask again (in-flight requests are keyed by
            # what they were asked for, and a late answer never replaces a newer cached edit)
            resp = wait_for(
                lambda: (r := rank(c, dev.url, user_id="bob", k=10).json())["adaptation"] == "cloud-edit" and r,
                timeout=10,
            )
            expect(resp, ids, editor.edit(ids).head_edit())
            time.sleep(slow_s)  # let step 3's late answer land
            expect(rank(c, dev.url, user_id="bob", k=10).json(), ids, editor.edit(ids).head_edit())
            text = c.get(f"{dev.url}/metrics").text
            assert metric(text, "persona_cloud_rtt_seconds_count", endpoint="edits", outcome="ok") >= 2
            assert metric(text, "persona_rank_adaptation_total", adaptation="prototype-cache") >= 2
    finally:
        cloud_srv.stop()


def test_device_without_cloud_uses_its_cached_bank(checkpoint, runtime, tmp_path):
    """A device that never reaches its cloud ranks from the prototype cache file it kept from before."""
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    bank = RandomEditor(dim, n_layers, version="cached-v7").snapshot()
    bank.save(tmp_path / "prototypes.json")
    cfg = serve_config(checkpoint, tmp_path)
    with LiveServer(device_app(cfg, "http://127.0.0.1:9")) as dev, httpx.Client(timeout=10, headers=AUTH) as c:
        body = rank(c, dev.url, history=["50", "172"], k=5).json()
        assert body["adaptation"] == "prototype-cache" and body["version"] == "cached-v7"
        assert c.get(f"{dev.url}/healthz").json()["cloud_available"] is False


def test_cloud_hot_reload_keeps_serving(checkpoint, runtime, tmp_path):
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    versions = iter(f"v{i}" for i in range(100))
    cfg = serve_config(checkpoint, tmp_path)
    capp, cloud = cloud_app(cfg, lambda: RandomEditor(dim, n_layers, version=next(versions)))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    statuses: list[int] = []
    stop = threading.Event()

    with LiveServer(capp) as srv:
        def hammer():
            with httpx.Client(timeout=10, headers=headers) as c:
                while not stop.is_set():
                    statuses.append(c.post(f"{srv.url}/v1/edits", json={"items": ["50", "172"]}).status_code)

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        with httpx.Client(timeout=30, headers=headers) as c:
            assert c.get(f"{srv.url}/v1/prototypes").json()["version"] == "v0"
            for want in ("v1", "v2"):
                assert c.post(f"{srv.url}/admin/reload").json() == {"version": want, "prototypes": 3}
                resp = c.get(f"{srv.url}/v1/prototypes")
                assert resp.json()["version"] == want and resp.headers["etag"] == f'"{want}"'
            assert c.get(f"{srv.url}/v1/prototypes", headers={"If-None-Match": '"v2"'}).status_code == 304
            wait_for(lambda: len(statuses) >= 10)
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}


def test_cloud_reloads_when_adapter_files_change(checkpoint, runtime, tmp_path):
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "version.txt").write_text("a")
    cfg = serve_config(checkpoint, tmp_path, f"serve.cloud.adapter_dir={adapter}", "serve.cloud.reload_poll_s=0.1")
    capp, _ = cloud_app(cfg, lambda: RandomEditor(dim, n_layers, version=(adapter / "version.txt").read_text()))
    with LiveServer(capp) as srv, httpx.Client(timeout=10, headers={"X-API-Key": API_KEY}) as c:
        assert c.get(f"{srv.url}/v1/prototypes").json()["version"] == "a"
        (adapter / "version.txt").write_text("bb")
        wait_for(lambda: c.get(f"{srv.url}/v1/prototypes").json()["version"] == "bb")
        assert "persona_reloads_total" in c.get(f"{srv.url}/metrics").text


class GatedCloud(CloudClient):
    """The device's cloud client with its HTTP call replaced (TEST DOUBLE of the call only: breaker, budget and
    parsing are the real client's): each edit waits for its gate, so the order in which answers land is chosen
    by the test."""

    def __init__(self, runtime):
        super().__init__("http://127.0.0.1:9", API_KEY, 1.0, Breaker(retry_s=0.0), Metrics("device"),
                         EditPayload.model_validate_json)  # a cloud that is back at once
        self.runtime, self.asked, self.gates = runtime, [], []

    async def edit(self, tokens, user_id=None, encoding="json", bank_version=None, state=None):
        import asyncio

        gate = asyncio.Event()
        self.asked.append(list(tokens))
        self.gates.append(gate)
        await gate.wait()
        dim, n_layers = self.runtime.model.head.dim, len(self.runtime.model.head.layers)
        return random_edit(f"gated:{tokens}", dim, n_layers, "gated-v1")


def test_a_late_cloud_answer_is_never_served_for_a_newer_history(checkpoint, runtime, tmp_path):
    """Request 1 (4 events) times out; events 5-6 arrive; request 2 must ask the cloud again rather than wait on
    request 1's answer, and request 1's answer landing last must not replace request 2's cached edit."""
    import asyncio

    from serving.schemas import EventsRequest, RankRequest

    cfg = serve_config(checkpoint, tmp_path, "serve.device.budget_ms=100")
    items = [str(t) for t in runtime.item_tokens[1:7]]
    svc = DeviceService(cfg, load_artifacts(cfg), None, API_KEY)
    svc.adaptation.client = cloud = GatedCloud(runtime)

    def events(lo, hi):
        rows = [{"event_id": f"e{i}", "user_id": "ann", "item_id": items[i]} for i in range(lo, hi)]
        return EventsRequest(events=rows)

    def expected(n):
        ids = ids_of(runtime, items[:n])
        want, _ = runtime.rank(ids, 10, exclude=set(ids), edit=random_edit(
            f"gated:{items[:n]}", runtime.model.head.dim, len(runtime.model.head.layers), "gated-v1").head_edit())
        return [str(runtime.item_tokens[i]) for i in want]

    def ranked(answer):
        return [it["item_id"] for it in answer["items"]]

    async def scenario():
        await svc.intake.add(events(0, 4))
        first = await svc.ranker.rank(RankRequest(user_id="ann"))
        assert first["adaptation"] == "base" and cloud.asked == [items[:4]]  # over budget: fallback
        await svc.intake.add(events(4, 6))  # refresh_every=2: the in-flight request is for an older history
        second = asyncio.create_task(svc.ranker.rank(RankRequest(user_id="ann")))
        await asyncio.sleep(0.02)
        assert cloud.asked == [items[:4], items[:6]]  # asked again for the current history
        cloud.gates[1].set()
        answer = await second
        assert answer["adaptation"] == "cloud-edit" and ranked(answer) == expected(6)
        cloud.gates[0].set()  # request 1's answer lands last
        await asyncio.sleep(0.05)
        again = await svc.ranker.rank(RankRequest(user_id="ann"))
        assert ranked(again) == expected(6) and len(cloud.asked) == 2  # cached, newest kept
        await svc.stop()

    asyncio.run(scenario())


def test_one_slow_answer_does_not_trip_the_breaker_a_slow_cloud_does(checkpoint, runtime, tmp_path):
    """Answers over budget trip the breaker only when ``serve.device.breaker_overruns`` of the last
    ``serve.device.breaker_window`` were late: under load one late answer must not send every other user to the
    fallback for ``cloud_retry_s``."""
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    cfg = serve_config(checkpoint, tmp_path, "serve.device.budget_ms=100", "serve.device.breaker_overruns=2",
                       "serve.device.cloud_retry_s=30")  # fmt: skip
    editor = RandomEditor(dim, n_layers)
    capp, _ = cloud_app(cfg, lambda: editor)
    items = [str(t) for t in runtime.item_tokens[1:30]]
    client = httpx.Client(timeout=10, headers=AUTH)
    with LiveServer(capp) as srv, LiveServer(device_app(cfg, srv.url)) as dev, client as c:
        wait_for(lambda: c.get(f"{dev.url}/healthz").json()["prototypes"] == 3)
        editor.delay_s = 1.0  # every answer misses the 100 ms budget
        kinds = []
        for n in range(3):  # a new user each time: each one asks the cloud
            post_events(c, dev.url, f"slow{n}", items[3 * n : 3 * n + 3])
            kinds.append(rank(c, dev.url, user_id=f"slow{n}", k=10).json()["adaptation"])
            text = c.get(f"{dev.url}/metrics").text
            assert metric(text, "persona_cloud_fallback_total", reason="timeout") == min(n + 1, 2)
            assert metric(text, "persona_cloud_fallback_total", reason="unavailable") == max(n - 1, 0)
            assert c.get(f"{dev.url}/healthz").json()["cloud_available"] is (n == 0)
        assert kinds == ["prototype-cache"] * 3
