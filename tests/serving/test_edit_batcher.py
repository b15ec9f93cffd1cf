"""The cloud's edit micro-batching: concurrent asks share one forward pass and get what each alone gets."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import torch

from llm_cloud.editor import EditAsk, edit_one, load_editor
from recsys.wire import EditPayload
from serving.cloud_app import CloudService, create_cloud_app
from serving.edit_batcher import EditBatcher
from serving.metrics import read_samples
from tests.serving.conftest import API_KEY, LiveServer, RandomEditor, real_editor_checkpoint, serve_config


class SlowEditor(RandomEditor):
    """TEST DOUBLE: RandomEditor whose batches take ``seconds`` (so asks pile up behind a running batch)."""

    def __init__(self, *args, seconds: float = 0.05, fail: bool = False, **kw):
        super().__init__(*args, **kw)
        self.seconds, self.fail, self.running = seconds, fail, threading.Event()

    def edit_many(self, asks):
        self.running.set()
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("adapter broke")
        return super().edit_many(asks)


def _asks(n: int) -> list[EditAsk]:
    return [EditAsk([1 + i, 2 + i, 3 + i]) for i in range(n)]


def test_asks_that_arrive_during_a_batch_form_the_next_one_and_get_their_own_edit():
    editor = SlowEditor(8, 2)
    sizes = []

    async def main():
        batcher = EditBatcher(max_batch=4, observe=sizes.append)
        first = asyncio.create_task(batcher.edit(editor, _asks(1)[0]))
        await asyncio.to_thread(editor.running.wait)  # the lone first ask runs at once, alone
        rest = [asyncio.create_task(batcher.edit(editor, a)) for a in _asks(7)[1:]]  # 6 more while it runs
        return [await first, *[await t for t in rest]]

    answers = asyncio.run(main())
    assert sizes == [1, 4, 2] and editor.batches == sizes  # bounded by max_batch; the queue drains in order
    for ask, got in zip(_asks(7), answers):
        assert got == edit_one(RandomEditor(8, 2), ask.item_ids)  # the edit it gets alone


def test_a_failing_batch_fails_each_of_its_asks_and_the_next_batch_runs():
    editor = SlowEditor(8, 2, fail=True)

    async def main():
        batcher = EditBatcher(max_batch=8)
        tasks = [asyncio.create_task(batcher.edit(editor, a)) for a in _asks(3)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        editor.fail = False
        return results, await batcher.edit(editor, _asks(1)[0])

    results, after = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert isinstance(after, EditPayload)


def test_a_cancelled_ask_does_not_disturb_the_others():
    editor = SlowEditor(8, 2)

    async def main():
        batcher = EditBatcher(max_batch=8)
        first = asyncio.create_task(batcher.edit(editor, _asks(1)[0]))
        await asyncio.to_thread(editor.running.wait)
        gone, kept = (asyncio.create_task(batcher.edit(editor, a)) for a in _asks(3)[1:])
        await asyncio.sleep(0)
        gone.cancel()  # its client went away while it queued
        return await first, await kept, gone

    first, kept, gone = asyncio.run(main())
    assert gone.cancelled() and isinstance(first, EditPayload) and isinstance(kept, EditPayload)
    assert editor.batches == [1, 1]  # the cancelled ask is not computed


def test_concurrent_devices_get_the_real_editors_own_edits_over_http(checkpoint, runtime, tmp_path):
    """8 concurrent ``POST /v1/edits`` to the live cloud serving a real adapter + bank: each answer is the
    edit that history gets alone, and concurrent requests were answered in shared forward passes."""
    torch.set_num_threads(1)
    ckpt = real_editor_checkpoint(checkpoint, runtime, tmp_path)
    cfg = serve_config((ckpt, checkpoint[1]), tmp_path)
    editor = load_editor(ckpt, runtime.model.head.dim, ckpt / "adapter-main")
    tokens = [str(t) for t in runtime.item_tokens]
    histories = [[tokens[1 + (7 * r + j) % 300] for j in range(3 + r)] for r in range(8)]
    with LiveServer(create_cloud_app(CloudService(cfg, ckpt), API_KEY)) as cloud:
        headers = {"Authorization": f"Bearer {API_KEY}"}

        async def burst():
            async with httpx.AsyncClient(base_url=cloud.url, headers=headers, timeout=30) as client:
                return await asyncio.gather(*[client.post("/v1/edits", json={"items": h}) for h in histories])

        for _ in range(5):
            responses = asyncio.run(burst())
            assert [r.status_code for r in responses] == [200] * 8
            for h, r in zip(histories, responses):
                want = edit_one(editor, [tokens.index(t) for t in h])
                got = EditPayload.model_validate(r.json())
                assert got.prototype_id == want.prototype_id
                for a, b in zip(got.head_edit().dW + got.head_edit().db, want.head_edit().dW + want.head_edit().db):
                    assert torch.allclose(a, b, atol=1e-6)
        text = httpx.get(f"{cloud.url}/metrics", headers=headers).text
    samples = {name: v for name, labels, v in read_samples(text) if name.startswith("persona_edit_batch_size")}
    assert samples["persona_edit_batch_size_sum"] == 40  # every request answered through the batcher
    assert samples["persona_edit_batch_size_count"] < 40  # ... and some of them together


def test_max_batch_one_answers_each_ask_alone():
    editor = SlowEditor(8, 2, seconds=0.01)

    async def main():
        batcher = EditBatcher(max_batch=1)
        return await asyncio.gather(*[batcher.edit(editor, a) for a in _asks(5)])

    asyncio.run(main())
    assert editor.batches == [1] * 5
