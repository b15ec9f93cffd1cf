"""The device's link to its cloud: async HTTP with hard timeouts, the operator's switch, and the circuit breaker.

The breaker is here and only here (:class:`Breaker`): a failed call (an error, a timeout, a 4xx/5xx, a malformed
edit) opens it for ``serve.device.cloud_retry_s``; so do ``serve.device.breaker_overruns`` of the last
``serve.device.breaker_window``
edit answers that came after the device's budget (:meth:`CloudClient.within`), so a few slow answers under load
do not send every user to the fallback while a slow cloud is skipped. While it is open, or while the operator
has cut the cloud (``PUT /v1/cloud``), :attr:`CloudClient.reachable` is false and the device serves alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx

from serving.metrics import Metrics

log = logging.getLogger(__name__)


class CloudError(RuntimeError):
    """The cloud did not give a usable answer (down, slow, 4xx/5xx, bad payload)."""


class Breaker:
    """Open for ``retry_s`` after a failure, or after ``overruns`` of the last ``window`` answers were late."""

    def __init__(self, retry_s: float, window: int = 20, overruns: int = 10):
        self.retry_s, self.overruns = retry_s, overruns
        self._late: deque[bool] = deque(maxlen=window)
        self._open_until = 0.0

    @property
    def closed(self) -> bool:
        return time.monotonic() >= self._open_until

    def failed(self) -> None:
        self._open_until = time.monotonic() + self.retry_s

    def answered(self, late: bool) -> None:
        self._late.append(late)
        if late and sum(self._late) >= self.overruns:
            self.failed()
            self._late.clear()


class CloudClient:
    """``edit`` and ``prototypes`` calls to the cloud at ``base_url``, each failure reported to the breaker.

    ``parse_edit`` turns an edit response body into the device runtime's payload (``ValueError``: malformed)."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float, breaker: Breaker, metrics: Metrics,
                 parse_edit: Callable[[bytes], Any]):  # fmt: skip
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s, limits=limits)
        self.breaker, self.metrics, self.parse_edit = breaker, metrics, parse_edit
        self.enabled = True  # PUT /v1/cloud: false → the device serves alone (cached bank / base)

    @property
    def available(self) -> bool:
        """The breaker is closed (the cloud is not being skipped after a failure)."""
        return self.breaker.closed

    @property
    def reachable(self) -> bool:
        """The device may call its cloud now: enabled, and the breaker closed."""
        return self.enabled and self.breaker.closed

    async def _request(self, endpoint: str, method: str, path: str, **kw) -> httpx.Response:
        t0 = time.perf_counter()
        outcome = "error"
        try:
            resp = await self._http.request(method, path, **kw)
            outcome = "ok" if resp.status_code < 400 else f"http_{resp.status_code // 100}xx"
            if resp.status_code >= 400:
                raise CloudError(f"{method} {path}: HTTP {resp.status_code}")
            return resp
        except httpx.TimeoutException as exc:
            outcome = "timeout"
            self.breaker.failed()
            raise CloudError(f"{method} {path}: timed out") from exc
        except httpx.HTTPError as exc:
            self.breaker.failed()
            raise CloudError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except CloudError:
            self.breaker.failed()
            raise
        finally:
            self.metrics.cloud_rtt.labels(endpoint, outcome).observe(time.perf_counter() - t0)

    async def edit(self, items: list[str], user_id: str | None = None, encoding: str = "json",
                   bank_version: str | None = None, state: str | None = None):  # fmt: skip
        """The cloud's edit for the window ``items`` (tokens) whose user state the device computed as ``state``
        (base64 float32; None: the cloud encodes the window), parsed by ``parse_edit``."""
        body = {"items": items, "user_id": user_id, "encoding": encoding, "bank_version": bank_version}
        if state is not None:
            body["state"] = state
        resp = await self._request("edits", "POST", "/v1/edits", json=body)
        try:
            return self.parse_edit(resp.content)
        except ValueError as exc:
            self.breaker.failed()
            raise CloudError(f"bad edit payload: {exc}") from exc

    async def within(self, answer: asyncio.Future, budget_s: float):
        """``answer`` (a request in flight, shared: it goes on after a timeout) if it comes within ``budget_s``;
        ``TimeoutError`` else. Each answer counts toward the breaker's overrun window."""
        try:
            result = await asyncio.wait_for(asyncio.shield(answer), budget_s)
        except asyncio.TimeoutError:
            self.breaker.answered(late=True)
            raise
        self.breaker.answered(late=False)
        return result

    async def prototypes(self, etag: str | None = None) -> bytes | None:
        """The bank snapshot's JSON, or ``None`` when the cloud says ours (``etag`` = its version) is current."""
        headers = {"If-None-Match": f'"{etag}"'} if etag else {}
        resp = await self._request("prototypes", "GET", "/v1/prototypes", headers=headers)
        return None if resp.status_code == 304 else resp.content

    async def aclose(self) -> None:
        await self._http.aclose()
