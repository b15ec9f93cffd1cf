"""The device's client of the cloud service: async HTTP, hard timeouts, a simple circuit breaker."""

from __future__ import annotations

import logging
import time

import httpx

from recsys.runtime import EditPayload, PrototypeSnapshot
from serving.metrics import Metrics

log = logging.getLogger(__name__)


class CloudError(RuntimeError):
    """The cloud did not give a usable answer (down, slow, 4xx/5xx, bad payload)."""


class CloudClient:
    """``edit`` and ``prototypes`` calls; after a failure the client reports itself unavailable for ``retry_s``."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float, retry_s: float, metrics: Metrics):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout_s, limits=limits)
        self.retry_s = retry_s
        self.metrics = metrics
        self._down_until = 0.0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def mark_down(self) -> None:
        self._down_until = time.monotonic() + self.retry_s

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
            self.mark_down()
            raise CloudError(f"{method} {path}: timed out") from exc
        except httpx.HTTPError as exc:
            self.mark_down()
            raise CloudError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except CloudError:
            self.mark_down()
            raise
        finally:
            self.metrics.cloud_rtt.labels(endpoint, outcome).observe(time.perf_counter() - t0)

    async def edit(
        self, items: list[str], user_id: str | None = None, encoding: str = "json", bank_version: str | None = None
    ) -> EditPayload:
        body = {"items": items, "user_id": user_id, "encoding": encoding, "bank_version": bank_version}
        resp = await self._request("edits", "POST", "/v1/edits", json=body)
        try:
            return EditPayload.model_validate_json(resp.content)
        except ValueError as exc:
            self.mark_down()
            raise CloudError(f"bad edit payload: {exc}") from exc

    async def prototypes(self, etag: str | None = None) -> PrototypeSnapshot | None:
        """The bank snapshot, or ``None`` when the cloud says ours (``etag`` = its version) is current."""
        headers = {"If-None-Match": f'"{etag}"'} if etag else {}
        resp = await self._request("prototypes", "GET", "/v1/prototypes", headers=headers)
        if resp.status_code == 304:
            return None
        try:
            return PrototypeSnapshot.model_validate_json(resp.content)
        except ValueError as exc:
            raise CloudError(f"bad prototype snapshot: {exc}") from exc

    async def aclose(self) -> None:
        await self._http.aclose()
