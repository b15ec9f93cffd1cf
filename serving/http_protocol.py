"""Connection limits for uvicorn's httptools protocol: a request-head timeout, a connection cap, descriptors.

uvicorn bounds a kept-alive connection's idle time (``timeout_keep_alive``, armed after a response) but not the time
to the first request head, nor how slowly a head may arrive: an idle or slow-header (slowloris) client holds a
descriptor for as long as it likes, and enough of them exhaust RLIMIT_NOFILE, after which the accept loop fails and
every route with it. :class:`LimitedHttpToolsProtocol` closes a connection with no complete request head
``header_timeout_s`` after it opened or after its last response, and closes connections beyond ``max_connections``
as soon as they are accepted. :func:`connection_cap` raises the soft descriptor limit so the cap fits under it.
The cap protects the descriptors, not the service: while ``max_connections`` idle clients hold a worker's slots, new
clients of that worker are refused until the head timeout frees slots.

uvicorn's ``limit_concurrency`` is not used: it answers 503 only once a request head is complete (an idle or
slow-header client never gets there) and keeps the descriptor open meanwhile, and it counts idle connections
against real requests, so a crowd of idle clients would turn every request into a 503.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
import weakref
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# descriptors kept free of client connections: the listening socket, the event log, the cloud client's pool,
# checkpoint and log files; a soft limit below 4x this keeps a quarter of it instead
HEADROOM_FDS = 256


def _headroom(soft: int) -> int:
    return min(HEADROOM_FDS, soft // 4)


def raise_nofile_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` (at most the hard limit, never lower); returns the soft limit.

    The soft limit is often 1,024 while the hard one is much higher: a process may raise its own, and needs to for
    a few thousand connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. macOS refuses more than OPEN_MAX
            log.warning("could not raise the descriptor limit", extra={"soft": soft, "wanted": target,
                                                                       "error": str(exc)})
    return soft


def connection_cap(max_connections: int) -> int:
    """The per-server connection cap to enforce: ``max_connections`` once the soft descriptor limit is raised to fit
    it plus :data:`HEADROOM_FDS`; lower, with a warning, where the hard limit does not allow that."""
    soft = raise_nofile_limit(max_connections + HEADROOM_FDS)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    cap = min(max_connections, soft - _headroom(soft))
    if cap < max_connections:
        log.warning("descriptor limit too low for serve.http.max_connections: lowering the cap",
                    extra={"max_connections": max_connections, "cap": cap, "nofile_soft_limit": soft})
    return cap


def process_budget() -> int | None:
    """How many client connections every server of this process may hold together (None: no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft - _headroom(soft)


class _ProcessConnections:
    """The connection sets of every server in this process: servers sharing a process (role all: two on one loop;
    tests: several, each on its own thread) share its descriptors, so the cap must hold for all of them together."""

    def __init__(self):
        self._lock = threading.Lock()  # servers on other threads may register while one counts
        self._states = weakref.WeakSet()  # uvicorn's ServerState of each server: its ``connections`` set

    def register(self, server_state) -> None:
        if server_state not in self._states:
            with self._lock:
                self._states.add(server_state)

    def count(self) -> int:
        with self._lock:
            states = list(self._states)
        return sum(len(s.connections) for s in states)


_PROCESS = _ProcessConnections()


class _RefusalLog:
    """Warns about refused connections at most once a minute (a flood would otherwise flood the log too)."""

    interval_s = 60.0

    def __init__(self):
        self.refused, self.logged_at = 0, float("-inf")

    def note(self, cap: int, open_now: int) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self.logged_at >= self.interval_s:
            log.warning("connection cap reached: closing new connections at once",
                        extra={"max_connections": cap, "open": open_now, "refused": self.refused})
            self.refused, self.logged_at = 0, now


_REFUSALS = _RefusalLog()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a request-head timeout and a connection cap; everything else is uvicorn's.

    Use :func:`limited_protocol` to get a subclass with the settings filled in (uvicorn builds the protocol itself,
    from ``Config(http=cls)``, and passes it no settings of ours)."""

    header_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 4096

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        _PROCESS.register(self.server_state)
        if self._over_cap():
            _REFUSALS.note(self.max_connections, len(self.connections))
            transport.abort()  # frees the descriptor now; connection_lost follows and forgets this connection
            return
        self._arm_header_timer()

    def _over_cap(self) -> bool:
        """Whether this (already counted) connection is one too many, for this server or for the process."""
        if len(self.connections) > self.max_connections:
            return True
        budget = process_budget()
        return budget is not None and _PROCESS.count() > budget

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # idle again (no pipelined request already parsed): the next request head has header_timeout_s to arrive
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self.header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timed_out(self) -> None:
        """No complete request head in time: close (no 408, the client may not even be speaking HTTP)."""
        self.header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def limited_protocol(header_timeout_s: float, max_connections: int) -> type[LimitedHttpToolsProtocol]:
    """A :class:`LimitedHttpToolsProtocol` subclass with these settings, for ``uvicorn.Config(http=...)``."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,),
                {"header_timeout_s": header_timeout_s, "max_connections": max_connections})
