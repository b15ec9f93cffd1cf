"""Micro-batching of concurrent ``POST /v1/edits`` requests inside one cloud worker.

A request that finds no batch running starts one at once (a lone device waits for nothing); requests that
arrive while a batch runs queue and form the next batch together, up to ``max_batch``, so batches grow with
the load by themselves. A batch is one :meth:`~llm_cloud.editor.Editor.edit_many` call — one batched
forward pass — in a worker thread, off the event loop. At 8 concurrent devices this answers them in about
the time of one or two single edits instead of eight in a row (``benchmarks/serve_load_cloud.py``).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from llm_cloud.editor import EditAsk, Editor
from recsys.wire import EditPayload


@dataclass
class _Waiting:
    editor: Editor  # the state's editor when the request came in (a reload swaps it; each keeps its own)
    ask: EditAsk
    answer: asyncio.Future


class EditBatcher:
    """Queues edit asks and answers them batch by batch; ``observe(size)`` sees each batch's size."""

    def __init__(self, max_batch: int, observe=None):
        self.max_batch = max_batch
        self.observe = observe
        self._queue: list[_Waiting] = []
        self._draining = False

    async def edit(self, editor: Editor, ask: EditAsk) -> EditPayload:
        answer = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(editor, ask, answer))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await answer

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                for _, group in itertools.groupby(batch, key=lambda w: id(w.editor)):
                    await self._run(list(group))
        finally:
            self._draining = False

    async def _run(self, group: list[_Waiting]) -> None:
        live = [w for w in group if not w.answer.done()]  # a client that went away is not computed for
        if not live:
            return
        if self.observe is not None:
            self.observe(len(live))
        try:
            payloads = await asyncio.to_thread(live[0].editor.edit_many, [w.ask for w in live])
        except Exception as exc:  # every request of the batch gets the error (the service answers 500s)
            for w in live:
                if not w.answer.done():
                    w.answer.set_exception(exc)
            return
        for w, payload in zip(live, payloads):
            if not w.answer.done():
                w.answer.set_result(payload)


__all__ = ["EditBatcher"]
