"""The device's copy of the cloud's prototype bank: loaded from the cache file at start, refetched in the
background every ``serve.device.prototypes_refresh_s`` while the cloud is reachable (``ETag``: an unchanged bank costs a
304), kept in the engine and written back to the file, so a restarted device works offline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from recsys.atomic_io import atomic_write_bytes
from serving.cloud_client import CloudClient, CloudError
from serving.engine import Engine

log = logging.getLogger(__name__)


class BankSync:
    def __init__(self, engine: Engine, client: CloudClient | None, path: Path, refresh_s: float, retry_s: float):
        self.engine, self.client, self.path = engine, client, Path(path)
        self.refresh_s, self.retry_s = refresh_s, max(retry_s, 0.2)
        self._task: asyncio.Task | None = None

    def load_cached(self) -> None:
        """The bank of the cache file, if there is a usable one."""
        if self.path.is_file():
            try:
                self.engine.load_bank(self.path.read_bytes())
            except (ValueError, OSError) as exc:
                log.warning("ignoring prototype cache %s: %s", self.path, exc)

    async def refresh(self) -> bool:
        """Fetch the bank if it changed; keep it in memory and in the cache file. True when it changed."""
        current = self.engine.bank_version
        raw = await self.client.prototypes(etag=current)
        if raw is None:
            return False
        try:
            version = self.engine.load_bank(raw)
        except ValueError as exc:
            raise CloudError(f"bad prototype snapshot: {exc}") from exc
        if version == current:
            return False
        await asyncio.to_thread(atomic_write_bytes, self.path, raw)
        log.info("prototype bank updated", extra={"version": version, "prototypes": self.engine.bank_size})
        return True

    async def _loop(self) -> None:
        while True:
            delay = self.refresh_s
            if self.client.reachable:
                try:
                    await self.refresh()
                except CloudError as exc:
                    log.warning("prototype refresh failed", extra={"error": str(exc)})
                    delay = min(delay, self.retry_s)
            else:
                delay = min(delay, self.retry_s)
            await asyncio.sleep(delay)

    def start(self) -> None:
        if self.client is not None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
