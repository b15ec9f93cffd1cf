"""A network link between a device and its cloud, emulated on 127.0.0.1: added delay, a bandwidth cap, bytes counted.

:class:`Link` is an asyncio TCP relay: the device is pointed at ``http://127.0.0.1:<link.port>`` and every byte
goes on to the cloud's port and back, counted per direction (``up``: device → cloud, ``down``: cloud → device),
each chunk held ``delay_s`` (one way) and, with ``bits_per_s``, queued behind the direction's earlier bytes at that
rate (one cap shared by every connection, as one access link). The replay (``benchmarks/replay.py``) measures
the bytes of each edit and the device's fallback on a slow link with it.
"""

from __future__ import annotations

import asyncio


class Link:
    """TCP relay ``127.0.0.1:port`` → ``127.0.0.1:upstream``: counts bytes each way, adds ``delay_s`` per direction
    and a shared ``bits_per_s`` cap per direction (``None``: none). Run it inside an event loop
    (:meth:`start` / :meth:`close`, or ``async with``)."""

    def __init__(self, upstream: int, delay_s: float = 0.0, bits_per_s: float | None = None):
        self.upstream, self.delay_s, self.bits_per_s = upstream, delay_s, bits_per_s
        self.bytes = {"up": 0, "down": 0}
        self._free_at = {"up": 0.0, "down": 0.0}
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> Link:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.server.close()

    async def __aenter__(self) -> Link:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, "up"), self._pipe(up_reader, writer, "down"))

    async def _pipe(self, reader, writer, direction: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(65536):
                self.bytes[direction] += len(data)
                if self.bits_per_s:
                    start = max(loop.time(), self._free_at[direction])
                    self._free_at[direction] = start + len(data) * 8 / self.bits_per_s
                    await asyncio.sleep(self._free_at[direction] - loop.time())
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
