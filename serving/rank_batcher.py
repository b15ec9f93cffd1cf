"""Micro-batching of concurrent ``POST /v1/rank`` requests inside one device worker: two steps of the rank path.

A request passes each step once: :meth:`RankBatcher.encode` (its window → user state and prototype: one encoder
pass, one prototype assignment and one OOD test for the whole batch) and, once its edit is known,
:meth:`RankBatcher.score` (one head pass with each row's own edit, one full-catalogue matmul, one top-k with each
request's ``k`` and exclusions). Nothing here knows what a request is for: the steps take plain arguments and
call the engine (:mod:`serving.engine`), never back into the service.

An encoder batch runs as soon as one of these holds:

- ``full``: ``max_batch`` requests are queued (``max_batch=1`` is batch-1 scoring, no waiting at all);
- ``idle``: one loop turn after a request is queued, no other admitted rank request is still on its way
  to the queue. Requests read in the same poll start as tasks together and each runs to the queue
  without yielding, so that turn lets them all join; a request that does yield on the way (e.g. its
  body comes in several reads) was admitted by the HTTP middleware when it started and is waited for.
  A lone request, or the last of a burst, runs after that one turn instead of waiting for the bound;
- ``timeout``: ``wait_ms`` passed since the oldest queued request (a request still on its way, e.g.
  stuck behind a slow client body, never holds the others longer than that).

A scoring batch runs one loop turn after its first row is queued (or when full): the rows of one encoder batch
whose edit is known at once come back in the same turn and are scored together; a row that waited for its cloud
edit joins the next scoring batch. Batches run on the event-loop thread (one model thread per worker): requests
that arrive meanwhile form the next batch, so batches grow with the load by themselves.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.engine import Engine, Row


@dataclass
class Ticket:
    """An admitted request; it stops counting as "on its way" when it reaches the queue or ends."""

    done: bool = False


@dataclass
class BatchRecord:
    size: int
    reason: str  # full | idle | timeout
    max_wait_s: float  # longest time a request of the batch spent in the queue


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    reasons: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    recent: deque = field(default_factory=lambda: deque(maxlen=1024))

    @property
    def mean_size(self) -> float:
        return self.requests / self.batches if self.batches else 0.0

    def add(self, record: BatchRecord) -> None:
        self.batches += 1
        self.requests += record.size
        self.reasons[record.reason] += 1
        self.sizes[record.size] += 1
        self.recent.append(record)


_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("persona_rank_ticket", default=None)


@dataclass
class _Pending:
    job: Any
    future: asyncio.Future
    queued_at: float


class _Step:
    """Jobs of one event loop run ``run(jobs) → results`` in batches (the module docstring's rules)."""

    def __init__(self, run: Callable[[list], list], max_batch: int, wait_s: float, on_batch=None):
        self.run, self.max_batch, self.wait_s, self.on_batch = run, max_batch, wait_s, on_batch
        self.stats = BatchStats()
        self.queue: list[_Pending] = []
        self.expected = 0  # admitted requests not yet queued (nor finished)
        self._timer: asyncio.TimerHandle | None = None
        self._idle_scheduled = False

    async def put(self, job) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.queue.append(_Pending(job, future, time.perf_counter()))
        if len(self.queue) >= self.max_batch:
            self._flush("full")
        else:
            if self.expected <= 0:
                self.schedule_idle(loop)
            if self._timer is None and self.expected > 0:  # someone is on the way: bounded by wait_s
                self._timer = loop.call_later(self.wait_s, self._flush, "timeout")
        return await future

    def schedule_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the queue after the callbacks already ready on the loop: requests read in the same poll are
        started as tasks together and each runs to this queue without yielding, so one loop turn lets them
        all join; a lone request loses only that turn."""
        if not self._idle_scheduled:
            self._idle_scheduled = True
            loop.call_soon(self._idle)

    def _idle(self) -> None:
        self._idle_scheduled = False
        if self.queue and self.expected <= 0:
            self._flush("idle")
        elif self.queue and self._timer is None:  # admitted meanwhile: wait for them, but not past the bound
            self._timer = asyncio.get_running_loop().call_later(self.wait_s, self._flush, "timeout")

    def _flush(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.queue:
            batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
            self._run(batch, reason)

    def _run(self, batch: list[_Pending], reason: str) -> None:
        now = time.perf_counter()
        live = [p for p in batch if not p.future.done()]  # a cancelled request (client gone) is dropped
        record = BatchRecord(len(live), reason, max((now - p.queued_at for p in batch), default=0.0))
        self.stats.add(record)
        if self.on_batch is not None:
            self.on_batch(record)
        if not live:
            return
        try:
            results = self.run([p.job for p in live])
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
            for p in live:
                p.future.set_exception(exc)
            return
        for p, result in zip(live, results):
            p.future.set_result(result)


@dataclass(frozen=True)
class _Score:
    state: Any
    edit: Any
    k: int
    exclude: set[int]


class RankBatcher:
    """The encoder and scoring steps of one worker's rank path (see the module docstring); ``on_batch`` sees each
    encoder batch's :class:`BatchRecord` (e.g. metrics)."""

    def __init__(self, engine: Engine, max_batch: int = 64, wait_ms: float = 1.0, on_batch=None):
        self.engine = engine
        self.max_batch = max(1, int(max_batch))
        self.encoder = _Step(self._encode, self.max_batch, max(0.0, wait_ms) / 1e3, on_batch)
        self.scorer = _Step(self._score, self.max_batch, max(0.0, wait_ms) / 1e3)

    @property
    def stats(self) -> BatchStats:
        """The encoder batches (how requests were grouped, and why)."""
        return self.encoder.stats

    @property
    def wait_s(self) -> float:
        return self.encoder.wait_s

    @wait_s.setter
    def wait_s(self, value: float) -> None:
        self.encoder.wait_s = self.scorer.wait_s = value

    # ---- admission (HTTP middleware) ------------------------------------------------------------

    def admit(self) -> Ticket:
        self.encoder.expected += 1
        return Ticket()

    def release(self, ticket: Ticket) -> None:
        """The request ended; if it never reached the queue, the others need not wait for it."""
        if not ticket.done:
            ticket.done = True
            self.encoder.expected -= 1
            if self.encoder.queue and self.encoder.expected <= 0:
                self.encoder.schedule_idle(asyncio.get_running_loop())

    @property
    def expected(self) -> int:
        return self.encoder.expected

    @property
    def queued(self) -> int:
        return len(self.encoder.queue)

    # ---- the two steps ----------------------------------------------------------------------------

    async def encode(self, window: list[int], ticket: Ticket | None = None) -> Row:
        """``window``'s user state and prototype, computed with the other requests' of its batch."""
        ticket = ticket if ticket is not None else _TICKET.get()
        if ticket is not None and not ticket.done:
            ticket.done = True
            self.encoder.expected -= 1
        return await self.encoder.put(window)

    async def score(self, state, edit, k: int, exclude: set[int]) -> tuple[list[int], list[float]]:
        """Top-``k`` item ids and scores for ``state`` under ``edit`` (None: base head), ``exclude`` removed."""
        return await self.scorer.put(_Score(state, edit, k, exclude))

    def _encode(self, windows: list[list[int]]) -> list[Row]:
        return self.engine.encode(windows)

    def _score(self, jobs: list[_Score]) -> list[tuple[list[int], list[float]]]:
        return self.engine.rank([j.state for j in jobs], [j.edit for j in jobs], [j.k for j in jobs],
                                [j.exclude for j in jobs])  # fmt: skip


class AdmitRank:
    """Pure ASGI middleware: admits every ``POST path`` to ``batcher`` as soon as its headers are read."""

    def __init__(self, app, batcher: RankBatcher, path: str = "/v1/rank"):
        self.app, self.batcher, self.path = app, batcher, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        ticket = self.batcher.admit()
        token = _TICKET.set(ticket)
        try:
            await self.app(scope, receive, send)
        finally:
            _TICKET.reset(token)
            self.batcher.release(ticket)
