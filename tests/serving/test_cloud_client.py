"""The device's cloud client against a real closed port and a real cloud on 127.0.0.1: errors become
CloudError, the breaker opens for ``retry_s`` and closes again, and every call is counted."""

from __future__ import annotations

import asyncio
import socket

import pytest

from serving.cloud_client import CloudClient, CloudError
from serving.metrics import Metrics
from tests.serving.conftest import API_KEY, LiveServer, RandomEditor, serve_config
from tests.serving.test_services import cloud_app, metric


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_a_dead_cloud_is_a_cloud_error_and_the_breaker_reopens_after_retry_s():
    metrics = Metrics("device")
    client = CloudClient(f"http://127.0.0.1:{_closed_port()}", API_KEY, timeout_s=2, retry_s=0.3, metrics=metrics)

    async def go():
        assert client.available
        with pytest.raises(CloudError, match="ConnectError"):
            await client.edit(["1", "2"])
        assert not client.available  # open: the device serves fallbacks without trying
        await asyncio.sleep(0.35)
        assert client.available  # retry_s later it may try again
        await client.aclose()

    asyncio.run(go())
    assert metric(metrics.render().decode(), "persona_cloud_rtt_seconds_count", endpoint="edits", outcome="error") == 1


def test_a_live_cloud_answers_edits_and_the_bank_with_its_etag(checkpoint, runtime, tmp_path):
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    cfg = serve_config(checkpoint, tmp_path)
    capp, _ = cloud_app(cfg, lambda: RandomEditor(dim, n_layers))
    metrics = Metrics("device")
    with LiveServer(capp) as cloud:
        async def go():
            client = CloudClient(cloud.url, API_KEY, timeout_s=10, retry_s=1, metrics=metrics)
            edit = await client.edit([str(t) for t in runtime.item_tokens[1:4]], encoding="json")
            bank = await client.prototypes()
            again = await client.prototypes(etag=bank.version)  # unchanged: 304, nothing to parse
            wrong = CloudClient(cloud.url, "not-the-key", timeout_s=10, retry_s=1, metrics=metrics)
            with pytest.raises(CloudError, match="401"):
                await wrong.edit(["1"])
            await client.aclose()
            await wrong.aclose()
            return edit, bank, again

        edit, bank, again = asyncio.run(go())
    assert len(edit.layers) == n_layers and bank.size == 3 and again is None
    text = metrics.render().decode()
    assert metric(text, "persona_cloud_rtt_seconds_count", endpoint="edits", outcome="ok") == 1
    assert metric(text, "persona_cloud_rtt_seconds_count", endpoint="edits", outcome="http_4xx") == 1
