"""Micro-batching of concurrent ``POST /v1/rank`` requests inside one device worker.

Requests queue here and are scored together: one encoder pass for their user states, one batched
prototype assignment, one head pass (rows share an edit object or carry their own, stacked), one
full-catalogue matmul and one top-k with per-request ``k`` and exclusions (``DeviceRuntime``'s batched
methods). A batch runs as soon as one of these holds:

- ``full``: ``max_batch`` requests are queued (``max_batch=1`` is batch-1 scoring, no waiting at all);
- ``idle``: one loop turn after a request is queued, no other admitted rank request is still on its way
  to the queue. Requests read in the same poll start as tasks together and each runs to the queue
  without yielding, so that turn lets them all join; a request that does yield on the way (e.g. its
  body comes in several reads) was admitted by the HTTP middleware when it started and is waited for.
  A lone request, or the last of a burst, runs after that one turn instead of waiting for the bound;
- ``timeout``: ``wait_ms`` passed since the oldest queued request (a request still on its way, e.g.
  stuck behind a slow client body, never holds the others longer than that).

Batches run on the event-loop thread (one torch thread per worker): requests that arrive while a
batch runs are read when it ends and form the next batch, so batches grow with the load by
themselves. A request whose adaptation needs the cloud leaves its first batch with its user state
(:class:`Encoded`), waits for the edit, and is scored in a later batch.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from recsys.models import HeadEdit
from recsys.runtime import DeviceRuntime


@dataclass
class Choice:
    """The adaptation a request is ranked with."""

    kind: str  # cloud-edit | prototype-cache | base
    version: str | None
    prototype_id: int | None
    edit: HeadEdit | None


@dataclass
class RankJob:
    """One ranking request. Either ``window`` is encoded here and ``choose(prototype, state)`` picks the
    adaptation (``None``: it needs an await, the job comes back as :class:`Encoded`), or ``state`` and ``choice``
    come from an earlier batch."""

    window: list[int]
    k: int
    exclude: set[int]
    choose: Callable[[int | None, torch.Tensor], Choice | None] | None = None
    state: torch.Tensor | None = None
    choice: Choice | None = None


@dataclass
class Ranked:
    items: list[int]
    scores: list[float]
    choice: Choice


@dataclass
class Encoded:
    """A request's user state and prototype (``None``: no bank or out of distribution), adaptation still open."""

    state: torch.Tensor
    prototype: int | None


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


_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("persona_rank_ticket", default=None)


@dataclass
class _Pending:
    job: RankJob
    future: asyncio.Future
    queued_at: float


class RankBatcher:
    """Collects rank jobs of one event loop and scores them in batches (see the module docstring)."""

    def __init__(self, runtime: DeviceRuntime, max_batch: int = 64, wait_ms: float = 1.0, on_batch=None):
        self.runtime = runtime
        self.max_batch = max(1, int(max_batch))
        self.wait_s = max(0.0, wait_ms) / 1e3
        self.on_batch = on_batch  # called with each BatchRecord (e.g. metrics)
        self.stats = BatchStats()
        self._queue: list[_Pending] = []
        self._expected = 0  # admitted requests not yet queued (nor finished)
        self._timer: asyncio.TimerHandle | None = None
        self._idle_scheduled = False

    # ---- admission (HTTP middleware) ------------------------------------------------------------

    def admit(self) -> Ticket:
        self._expected += 1
        return Ticket()

    def release(self, ticket: Ticket) -> None:
        """The request ended; if it never reached the queue, the others need not wait for it."""
        if not ticket.done:
            ticket.done = True
            self._expected -= 1
            if self._queue and self._expected <= 0:
                self._schedule_idle(asyncio.get_running_loop())

    @property
    def expected(self) -> int:
        return self._expected

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ---- ranking --------------------------------------------------------------------------------

    async def rank(self, job: RankJob, ticket: Ticket | None = None) -> Ranked | Encoded:
        ticket = ticket if ticket is not None else _TICKET.get()
        if ticket is not None and not ticket.done:
            ticket.done = True
            self._expected -= 1
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append(_Pending(job, future, time.perf_counter()))
        if len(self._queue) >= self.max_batch:
            self._flush("full")
        else:
            if self._expected <= 0:
                self._schedule_idle(loop)
            if self._timer is None:
                self._timer = loop.call_later(self.wait_s, self._flush, "timeout")
        return await future

    def _schedule_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the queue after the callbacks already ready on the loop: requests read in the same poll are
        started as tasks together and each runs to this queue without yielding, so one loop turn lets them
        all join; a lone request loses only that turn."""
        if not self._idle_scheduled:
            self._idle_scheduled = True
            loop.call_soon(self._idle)

    def _idle(self) -> None:
        self._idle_scheduled = False
        if self._queue and self._expected <= 0:
            self._flush("idle")

    def _flush(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            self._run(batch, reason)

    def _run(self, batch: list[_Pending], reason: str) -> None:
        now = time.perf_counter()
        live = [p for p in batch if not p.future.done()]  # a cancelled request (client gone) is dropped
        record = BatchRecord(len(live), reason, max((now - p.queued_at for p in batch), default=0.0))
        self.stats.batches += 1
        self.stats.requests += record.size
        self.stats.reasons[reason] += 1
        self.stats.sizes[record.size] += 1
        self.stats.recent.append(record)
        if self.on_batch is not None:
            self.on_batch(record)
        if not live:
            return
        try:
            results = self.score([p.job for p in live])
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
            for p in live:
                p.future.set_exception(exc)
            return
        for p, result in zip(live, results):
            p.future.set_result(result)

    def score(self, jobs: list[RankJob]) -> list[Ranked | Encoded]:
        """Score ``jobs`` together (synchronous; the batch-1 equivalent is ``DeviceRuntime.rank``)."""
        rt = self.runtime
        results: list[Ranked | Encoded | None] = [None] * len(jobs)
        states: list[torch.Tensor | None] = [job.state for job in jobs]
        choices: list[Choice | None] = [job.choice for job in jobs]
        fresh = [i for i, job in enumerate(jobs) if job.state is None]
        if fresh:
            encoded = rt.user_states([jobs[i].window for i in fresh])
            protos, _ = rt.assign_batch(encoded)
            far = rt.ood_flags(encoded, protos)
            for n, i in enumerate(fresh):
                proto = None if far[n] else protos[n]
                states[i] = encoded[n]
                choose = jobs[i].choose
                base = Choice("base", None, None, None)
                choices[i] = choose(proto, encoded[n]) if choose is not None else base
                if choices[i] is None:
                    results[i] = Encoded(encoded[n], proto)
        todo = [i for i in range(len(jobs)) if results[i] is None]
        if todo:
            ranked = rt.rank_states(
                torch.stack([states[i] for i in todo]),
                [choices[i].edit for i in todo],
                [jobs[i].k for i in todo],
                [jobs[i].exclude for i in todo],
            )
            for i, (items, scores) in zip(todo, ranked):
                results[i] = Ranked(items, scores, choices[i])
        return results


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
