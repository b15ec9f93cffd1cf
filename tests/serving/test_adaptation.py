"""Which edit ranks a request, against a real cloud on 127.0.0.1: the fallback without a cloud or with it cut, a
fresh edit asked once and then reused, an answer over budget falling back and filling the cache late, a policy
that does not ask reusing the user's edit; each fallback counted by its reason."""

from __future__ import annotations

import asyncio

from recsys.runtime import DeviceRuntime
from serving.adaptation import Adaptation
from serving.cloud_client import Breaker, CloudClient
from serving.engine import TorchEngine
from serving.metrics import Metrics
from serving.rank_input import RankInput
from tests.serving.conftest import API_KEY, LiveServer, RandomEditor, serve_config
from tests.serving.test_services import cloud_app, metric


def ask(runtime, user: str, n: int) -> RankInput:
    tokens = [str(t) for t in runtime.item_tokens[1 : n + 1]]
    return RankInput(user, 10, [runtime.token_to_id[t] for t in tokens], tokens, set(), n, [])


def test_the_decision_and_the_edit(checkpoint, runtime, tmp_path):
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    editor = RandomEditor(dim, n_layers)
    cfg = serve_config(checkpoint, tmp_path, "serve.device.budget_ms=300")
    capp, _ = cloud_app(cfg, lambda: editor)
    engine = TorchEngine(DeviceRuntime(runtime.model, runtime.item_tokens))
    engine.load_bank(editor.snapshot().model_dump_json().encode())
    metrics = Metrics("device")
    alone = Adaptation(engine, None, cfg.serve.device, metrics)
    with LiveServer(capp) as srv:
        client = CloudClient(srv.url, API_KEY, 5, Breaker(30), metrics, engine.parse_edit)
        adapt = Adaptation(engine, client, cfg.serve.device, metrics)

        async def choose(a, user, n):
            inp = ask(runtime, user, n)
            return await a.choose(inp, engine.encode([inp.window])[0])

        async def go():
            no_cloud = await choose(alone, "ann", 3)
            assert no_cloud.kind == "prototype-cache" and no_cloud.edit is engine.fallback(no_cloud.prototype_id)
            fresh = await choose(adapt, "ann", 3)
            assert fresh.kind == "cloud-edit" and editor.calls == 1
            assert (await choose(adapt, "ann", 3)).edit is fresh.edit and editor.calls == 1  # nothing new: reused
            client.enabled = False
            assert (await choose(adapt, "ann", 3)).kind == "prototype-cache"  # cut: its cached edit unused
            client.enabled = True
            editor.delay_s = 0.6  # answers come after the 300 ms budget
            late = await choose(adapt, "bob", 5)
            assert late.kind == "prototype-cache" and editor.calls == 1
            await asyncio.sleep(0.8)  # the late answer lands in the cache
            cached = await choose(adapt, "bob", 5)
            assert cached.kind == "cloud-edit" and editor.calls == 2
            await client.aclose()

        asyncio.run(go())
    text = metrics.render().decode()
    assert metric(text, "persona_cloud_fallback_total", reason="disabled") == 1
    assert metric(text, "persona_cloud_fallback_total", reason="timeout") == 1


def test_a_policy_that_does_not_ask_reuses_the_users_edit(checkpoint, runtime, tmp_path):
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    editor = RandomEditor(dim, n_layers)
    cfg = serve_config(checkpoint, tmp_path, "serve.device.request_policy=drift", "serve.device.request_rate=0.0",
                       "serve.device.edit_max_age=2")  # fmt: skip
    capp, _ = cloud_app(cfg, lambda: editor)
    engine = TorchEngine(DeviceRuntime(runtime.model, runtime.item_tokens))
    engine.load_bank(editor.snapshot().model_dump_json().encode())
    metrics = Metrics("device")
    with LiveServer(capp) as srv:
        client = CloudClient(srv.url, API_KEY, 5, Breaker(30), metrics, engine.parse_edit)
        adapt = Adaptation(engine, client, cfg.serve.device, metrics)

        async def go():
            inp = ask(runtime, "ann", 3)
            row = engine.encode([inp.window])[0]
            adapt.cache.put("u:ann", _answered(await client.edit(inp.tokens, "ann"), engine, inp, row))
            kinds = []
            for n in (4, 5, 6):  # rate 0: never asks; the edit serves until it is edit_max_age events old
                inp = ask(runtime, "ann", n)
                kinds.append((await adapt.choose(inp, engine.encode([inp.window])[0])).kind)
            await client.aclose()
            return kinds

        assert asyncio.run(go()) == ["cloud-edit", "prototype-cache", "prototype-cache"]
    assert editor.calls == 1  # the test's own ask
    assert metric(metrics.render().decode(), "persona_cloud_ask_total", decision="skipped") == 3


def _answered(payload, engine, inp, row):
    from serving.edit_cache import CachedEdit

    return CachedEdit(engine.decode(payload), inp.n_events, row.prototype, engine.bank_version, row.state)
