"""Which head edit ranks a request: the decision from the user's state, then the edit (a step of the rank path).

From what the device computed (the user state and the prototype it may fall back on) and what it holds (the
user's cached cloud edit), in this order:

1. no cloud configured, or the operator cut it (``PUT /v1/cloud``): the device's fallback;
2. a cached cloud edit that is current for this history (:mod:`serving.edit_cache`): that edit;
3. a request policy other than ``refresh`` decides once per new event whether to ask
   (:mod:`serving.request_policy`); when it does not, the user's edit of this bank is reused (at most
   ``serve.device.edit_max_age`` events old), else the fallback;
4. the breaker open: the fallback; else the cloud is asked (sharing a request in flight for the same history) and
   waited for at most ``serve.device.budget_ms``. Over budget or failing: the fallback, and the late answer still fills
   the cache (background catch-up).

The fallback is the nearest cached prototype's edit where the bank's OOD rule and cache gate allow it
(``prototype-cache``), else the base head (``base``). The cloud is never an error to the user.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from serving.cloud_client import CloudClient, CloudError
from serving.edit_cache import CachedEdit, EditCache
from serving.engine import Engine, Row
from serving.metrics import Metrics
from serving.rank_input import RankInput
from serving.request_policy import RequestPolicy
from serving.serve_config import DeviceConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    """The adaptation a request is ranked with."""

    kind: str  # cloud-edit | prototype-cache | base
    version: str | None
    prototype_id: int | None
    edit: Any  # the engine's edit (None: the base head)


BASE = Choice("base", None, None, None)


class Adaptation:
    """The decision and the edit for each request (see the module docstring); ``client`` None: no cloud."""

    def __init__(self, engine: Engine, client: CloudClient | None, s: DeviceConfig, metrics: Metrics):
        self.engine, self.client, self.s, self.metrics = engine, client, s, metrics
        self.policy = None if s.request_policy == "refresh" else RequestPolicy(s.request_policy, s.request_rate)
        self.cache = EditCache(s.edit_cache_size, s.refresh_every if self.policy is None else None)

    async def choose(self, inp: RankInput, row: Row) -> Choice:
        """The edit to rank ``inp`` with, its user state and prototype being ``row``."""
        if self.client is None:
            return self.fallback(row.prototype)
        key = f"u:{inp.user_id}" if inp.user_id is not None else "h:" + _digest(inp.window)
        known = self._decide(key, inp.n_events, row)
        return known if known is not None else await self._ask(key, inp, row)

    def fallback(self, prototype: int | None, reason: str | None = None) -> Choice:
        """The device's own adaptation (``reason``: why the cloud's is not used, counted)."""
        if reason is not None:
            self.metrics.fallback.labels(reason).inc()
        edit = self.engine.fallback(prototype)
        if edit is not None:
            return Choice("prototype-cache", self.engine.bank_version, prototype, edit)
        return BASE  # no bank, out of distribution, or an edit that did not gain

    def _decide(self, key: str, n_events: int, row: Row) -> Choice | None:
        """The choice when it is known without waiting; None: ask the cloud."""
        if not self.client.enabled:  # cut: the device serves alone, its cached cloud edits unused
            return self.fallback(row.prototype, "disabled")
        bank = self.engine.bank_version
        cached = self.cache.get(key)
        if self.cache.current(cached, n_events, row.prototype, bank):
            return _from_cloud(cached.received)
        if self.policy is not None:  # the user's own edit of this bank stays usable until the policy asks
            usable = cached if cached is not None and cached.bank == bank else None
            if not self._policy_asks(key, n_events, row.state, usable):
                return self._reuse(usable, n_events, row.prototype)
        if not self.client.reachable:
            return self.fallback(row.prototype, "unavailable")
        return None

    def _policy_asks(self, key: str, n_events: int, state, usable: CachedEdit | None) -> bool:
        """One decision per new event: does it ask? Drift is measured from the state the usable edit was asked with
        (none: infinite, it asks first)."""
        if not self.cache.first_decision(key, n_events):  # decided already (the answer may be on its way)
            return False
        far = usable is None or usable.state is None
        asked = self.policy.ask(float("inf") if far else self.engine.distance(state, usable.state))
        self.metrics.cloud_ask.labels("asked" if asked else "skipped").inc()
        return asked

    def _reuse(self, usable: CachedEdit | None, n_events: int, prototype: int | None) -> Choice:
        """The user's edit of this bank while the policy does not ask, unless older than ``serve.device.edit_max_age``
        events (a stale edit can rank below the fallback)."""
        limit = self.s.edit_max_age
        fresh = usable is not None and usable.received is not None and (
            limit is None or n_events - usable.n_events < limit)
        return _from_cloud(usable.received) if fresh else self.fallback(prototype)

    async def _ask(self, key: str, inp: RankInput, row: Row) -> Choice:
        """Ask the cloud (or join the request in flight for this history); wait at most ``serve.device.budget_ms``."""
        bank = self.engine.bank_version
        request = self.cache.joinable(key, inp.n_events, row.prototype, bank)
        if request is None:
            asked = CachedEdit(None, inp.n_events, row.prototype, bank, row.state)
            request = asyncio.create_task(self._fetch(key, inp.tokens, inp.user_id, asked))
            request.add_done_callback(_consume)  # a late failure nobody waits for any more is not an error
            self.cache.track(key, request, asked)
        try:
            fresh = await self.client.within(request, self.s.budget_ms / 1e3)
        except asyncio.TimeoutError:
            log.warning("cloud edit over budget", extra={"key": key, "budget_ms": self.s.budget_ms})
            return self.fallback(row.prototype, "timeout")
        except CloudError as exc:
            log.warning("cloud edit failed", extra={"key": key, "error": str(exc)})
            return self.fallback(row.prototype, "error")
        return _from_cloud(fresh.received)

    async def _fetch(self, key: str, tokens: list[str], user_id: str | None, asked: CachedEdit) -> CachedEdit:
        """The cloud's edit for ``tokens``, decoded and checked, into the cache (even when it comes late)."""
        try:
            code_bank = self.engine.code_version  # code edits need the cached bank's decoder: dense until then
            encoding = self.s.edit_encoding if self.s.edit_encoding != "code" or code_bank else "fp32"
            state = self.engine.wire_state(asked.state)  # the cloud starts from it: no second encoder pass
            payload = await self.client.edit(tokens, user_id, encoding, code_bank, state)
            try:
                received = self.engine.decode(payload)
            except ValueError as exc:
                raise CloudError(f"unusable edit: {exc}") from exc
            answered = dataclasses.replace(asked, received=received)
            self.cache.put(key, answered)
            return answered
        finally:
            self.cache.untrack(key, asyncio.current_task())

    def stop(self) -> None:
        self.cache.cancel_all()


def _from_cloud(received) -> Choice:
    kind = "cloud-edit" if received.edit is not None else "base"
    return Choice(kind, received.version, received.prototype_id, received.edit)


def _digest(window: list[int]) -> str:
    return hashlib.sha1(repr(window).encode()).hexdigest()


def _consume(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
