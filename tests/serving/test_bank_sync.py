"""The device's cached bank against a real cloud on 127.0.0.1: the cache file at start (a broken one ignored), a
refetch that writes the file, an unchanged bank costing a 304, a bank that does not fit the model refused, and the
background loop following the cloud's reloads."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from recsys.runtime import DeviceRuntime
from recsys.wire import PrototypeSnapshot
from serving.bank_sync import BankSync
from serving.cloud_client import Breaker, CloudClient, CloudError
from serving.engine import TorchEngine
from serving.metrics import Metrics
from tests.serving.conftest import API_KEY, AUTH, LiveServer, RandomEditor, serve_config, wait_for
from tests.serving.test_services import cloud_app, metric


def parts(runtime, url: str, path):
    engine = TorchEngine(DeviceRuntime(runtime.model, runtime.item_tokens))
    metrics = Metrics("device")
    client = CloudClient(url, API_KEY, 10, Breaker(0.3), metrics, engine.parse_edit)
    return engine, client, BankSync(engine, client, path, refresh_s=0.1, retry_s=0.3), metrics


def test_the_bank_is_fetched_cached_and_refetched_only_when_it_changed(checkpoint, runtime, tmp_path):
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    versions = iter(["v1", "v2", "v3"])
    cfg = serve_config(checkpoint, tmp_path)
    capp, _ = cloud_app(cfg, lambda: RandomEditor(dim, n_layers, version=next(versions)))
    path = tmp_path / "device" / "prototypes.json"
    with LiveServer(capp) as srv:
        engine, client, bank, metrics = parts(runtime, srv.url, path)

        async def go():
            bank.load_cached()  # no file yet: no bank
            assert engine.bank_version is None
            assert await bank.refresh() and engine.bank_version == "v1" and engine.bank_size == 3
            assert PrototypeSnapshot.load(path).version == "v1"  # kept for a restart
            assert not await bank.refresh()  # unchanged: 304
            bank.start()  # the background loop follows the cloud's reload
            reloaded = await asyncio.to_thread(httpx.post, f"{srv.url}/admin/reload", headers=AUTH)
            assert reloaded.json()["version"] == "v2"
            await asyncio.to_thread(wait_for, lambda: engine.bank_version == "v2")
            await bank.stop()
            await client.aclose()

        asyncio.run(go())
    text = metrics.render().decode()
    assert metric(text, "persona_cloud_rtt_seconds_count", endpoint="prototypes", outcome="ok") >= 3
    wait_for(lambda: PrototypeSnapshot.load(path).version == "v2")

    restarted, _, again, _ = parts(runtime, "http://127.0.0.1:9", path)
    again.load_cached()  # a restarted device works offline with its cached bank
    assert restarted.bank_version == "v2"
    path.write_text("{broken")
    fresh, _, broken, _ = parts(runtime, "http://127.0.0.1:9", path)
    broken.load_cached()  # ignored (logged): the device starts without a bank
    assert fresh.bank_version is None


def test_a_bank_that_does_not_fit_the_model_is_refused(checkpoint, runtime, tmp_path):
    cfg = serve_config(checkpoint, tmp_path)
    capp, _ = cloud_app(cfg, lambda: RandomEditor(runtime.model.head.dim + 1, 1, version="wide"))
    with LiveServer(capp) as srv:
        engine, client, bank, _ = parts(runtime, srv.url, tmp_path / "prototypes.json")

        async def go():
            with pytest.raises(CloudError, match="prototype dim"):
                await bank.refresh()
            await client.aclose()

        asyncio.run(go())
    assert engine.bank_version is None and not (tmp_path / "prototypes.json").exists()
