"""The device's cloud edits per user: the cached answers, the requests in flight, the policy's decisions.

A cached edit answers a request without asking again while it is *current*: made for the same prototype and
bank, and (policy ``refresh``) at most ``refresh_every - 1`` events old, or (``drift`` / ``random``: a new event
is a new decision) for the same history length. Keys are the device's (``u:<user>``, or a history's hash); each
map keeps its most recently used ``size`` keys.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from serving.engine import Received


@dataclass(frozen=True)
class CachedEdit:
    """A cloud edit (``received``; None while asked) and what it was asked for."""

    received: Received | None
    n_events: int  # history length when it was asked
    prototype: int | None  # the device's prototype then
    bank: str | None  # the bank version then
    state: Any = None  # the user state then (the drift policy's reference)


class EditCache:
    """Cached edits, requests in flight and policy decisions per key (``refresh_every`` None: every new event is a
    new decision)."""

    def __init__(self, size: int, refresh_every: int | None):
        self.size, self.refresh_every = size, refresh_every
        self.edits: OrderedDict[str, CachedEdit] = OrderedDict()
        self.inflight: dict[str, tuple[asyncio.Future, CachedEdit]] = {}  # key → (the request, what it asked)
        self.decided: OrderedDict[str, int] = OrderedDict()  # key → history length of its last decision

    def current(self, c: CachedEdit | None, n_events: int, prototype: int | None, bank: str | None) -> bool:
        """Whether ``c`` (cached or in flight) answers this history without a new request."""
        if c is None or c.prototype != prototype or c.bank != bank:
            return False
        if self.refresh_every is None:
            return c.n_events == n_events
        return c.n_events <= n_events < c.n_events + self.refresh_every

    def get(self, key: str) -> CachedEdit | None:
        """The key's cached edit, marked as recently used."""
        cached = self.edits.get(key)
        if cached is not None:
            self.edits.move_to_end(key)
        return cached

    def put(self, key: str, cached: CachedEdit) -> None:
        """Keep ``cached`` unless the key holds an answer for a longer history (a late answer never replaces it)."""
        newer = self.edits.get(key)
        if newer is None or newer.n_events <= cached.n_events:
            self.edits[key] = cached
            self.edits.move_to_end(key)
            _trim(self.edits, self.size)

    def first_decision(self, key: str, n_events: int) -> bool:
        """True once per (key, history length): the policy decides once per new event."""
        if self.decided.get(key) == n_events:
            return False
        self.decided[key] = n_events
        self.decided.move_to_end(key)
        _trim(self.decided, self.size)
        return True

    def joinable(self, key: str, n_events: int, prototype: int | None, bank: str | None) -> asyncio.Future | None:
        """The request in flight for this key, if it was asked for what this history needs."""
        pending = self.inflight.get(key)
        return pending[0] if pending is not None and self.current(pending[1], n_events, prototype, bank) else None

    def track(self, key: str, request: asyncio.Future, asked: CachedEdit) -> None:
        self.inflight[key] = (request, asked)

    def untrack(self, key: str, request: asyncio.Future) -> None:
        if self.inflight.get(key, (None,))[0] is request:
            del self.inflight[key]

    def cancel_all(self) -> None:
        for request, _ in list(self.inflight.values()):
            request.cancel()


def _trim(cache: OrderedDict, size: int) -> None:
    while len(cache) > size:
        cache.popitem(last=False)
