"""The device's cloud client against a real closed port and a real cloud on 127.0.0.1: errors become
CloudError, the breaker (failures and answers over budget) opens for ``retry_s`` and closes again, the operator's
switch, and every call is counted."""

from __future__ import annotations

import asyncio
import socket

import pytest

from recsys.wire import EditPayload, PrototypeSnapshot
from serving.cloud_client import Breaker, CloudClient, CloudError
from serving.metrics import Metrics
from tests.serving.conftest import API_KEY, LiveServer, RandomEditor, serve_config
from tests.serving.test_services import cloud_app, metric


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def client(url: str, key: str = API_KEY, retry_s: float = 1.0, metrics: Metrics | None = None, **breaker):
    return CloudClient(url, key, timeout_s=10, breaker=Breaker(retry_s, **breaker),
                       metrics=metrics or Metrics("device"), parse_edit=EditPayload.model_validate_json)


def test_a_dead_cloud_is_a_cloud_error_and_the_breaker_reopens_after_retry_s():
    metrics = Metrics("device")
    dead = client(f"http://127.0.0.1:{_closed_port()}", retry_s=0.3, metrics=metrics)

    async def go():
        assert dead.available and dead.reachable
        with pytest.raises(CloudError, match="ConnectError"):
            await dead.edit(["1", "2"])
        assert not dead.available and not dead.reachable  # open: the device serves fallbacks without trying
        await asyncio.sleep(0.35)
        assert dead.available  # retry_s later it may try again
        dead.enabled = False  # the operator's cut: not reachable, whatever the breaker says
        assert dead.available and not dead.reachable
        await dead.aclose()

    asyncio.run(go())
    assert metric(metrics.render().decode(), "persona_cloud_rtt_seconds_count", endpoint="edits", outcome="error") == 1


def test_answers_over_budget_open_the_breaker_only_when_most_recent_ones_were():
    breaker = Breaker(retry_s=30, window=4, overruns=2)
    for late in (False, True, False):
        breaker.answered(late)
    assert breaker.closed  # one late answer among the last three
    breaker.answered(True)
    assert not breaker.closed  # two of the last four: open, and the window starts afresh

    async def go():
        slow = client("http://127.0.0.1:9", window=3, overruns=2)
        never = asyncio.get_running_loop().create_future()
        for _ in range(2):
            with pytest.raises(asyncio.TimeoutError):
                await slow.within(never, 0.01)
        assert not never.cancelled() and not slow.available  # the request goes on; the breaker opened
        done = asyncio.get_running_loop().create_future()
        done.set_result("edit")
        assert await slow.within(done, 0.01) == "edit"
        never.cancel()
        await slow.aclose()

    asyncio.run(go())


def test_a_live_cloud_answers_edits_and_the_bank_with_its_etag(checkpoint, runtime, tmp_path):
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    cfg = serve_config(checkpoint, tmp_path)
    capp, _ = cloud_app(cfg, lambda: RandomEditor(dim, n_layers))
    metrics = Metrics("device")
    with LiveServer(capp) as cloud:
        async def go():
            live = client(cloud.url, metrics=metrics)
            edit = await live.edit([str(t) for t in runtime.item_tokens[1:4]], encoding="json")
            bank = PrototypeSnapshot.model_validate_json(await live.prototypes())
            again = await live.prototypes(etag=bank.version)  # unchanged: 304, nothing to parse
            wrong = client(cloud.url, "not-the-key", metrics=metrics)
            with pytest.raises(CloudError, match="401"):
                await wrong.edit(["1"])
            assert not wrong.available and live.available
            await live.aclose()
            await wrong.aclose()
            return edit, bank, again

        edit, bank, again = asyncio.run(go())
    assert len(edit.layers) == n_layers and bank.size == 3 and again is None
    text = metrics.render().decode()
    assert metric(text, "persona_cloud_rtt_seconds_count", endpoint="edits", outcome="ok") == 1
    assert metric(text, "persona_cloud_rtt_seconds_count", endpoint="edits", outcome="http_4xx") == 1
