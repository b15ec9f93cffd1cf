"""The device's durable event log: SQLite in WAL mode, idempotent per user on the event id, group commit.

:class:`EventStore` is what the service holds; it opens the file and puts together three parts, one job each:

- :mod:`serving.event_schema` — the file: connections, the schema, the migration of an older layout in place
  on open, the split of the per-user counts by the catalogue;
- :mod:`serving.event_writer` — the one writer thread: it batches the queued requests into one transaction
  (each request all or nothing under its own savepoint) and acknowledges each only after the commit, so
  nothing acknowledged is lost; event ids scoped per user (:class:`EventConflict`), unknown items capped per
  user (:class:`TooManyUnknownItems`);
- :mod:`serving.event_history` — the reads: a user's last ``window`` items and known-item counts, bounded
  however long the history, served from a per-user cache kept exact across processes by catching up on the
  rows committed since the last read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from concurrent.futures import Future
from pathlib import Path

from serving.event_history import HistoryReader, UserHistory
from serving.event_schema import open_log
from serving.event_writer import (
    EventWriter,
    Row,
    WriteResult,
)


class EventStore:
    """Append-only user events in one SQLite file; :meth:`append` is safe to await from any event loop."""

    def __init__(
        self,
        path: Path,
        synchronous: str = "FULL",
        max_batch: int = 10_000,
        history_cache_users: int = 10_000,
        window: int | None = None,
        catch_up_rows: int = 10_000,
        known: Collection[str] | None = None,
        max_unknown: int | None = None,
    ):
        """``window``: how many recent items a history read returns (None: all; the device: ``max_seq_len``).
        ``known``: the model's catalogue (item ids; None: every item counts as known). ``max_unknown``:
        distinct item ids outside ``known`` one user may store (None: no limit)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.known: frozenset[str] | None = None if known is None else frozenset(map(str, known))
        if max_unknown is not None and max_unknown < 0:
            raise ValueError(f"max_unknown must be >= 0 or None, got {max_unknown}")
        watermark = open_log(self.path, synchronous, self.known)
        self.reader = HistoryReader(self.path, synchronous, window, self.known, history_cache_users, catch_up_rows,
                                    watermark)  # fmt: skip
        self.writer = EventWriter(self.path, synchronous, max_batch, self.known, max_unknown)

    # ---- writes ---------------------------------------------------------------------------------

    def append_future(self, rows: list[Row]) -> Future:
        """Queue ``rows`` (one request: all stored or none); the future resolves to a :class:`WriteResult`
        after their commit, or fails with :class:`EventConflict` / :class:`TooManyUnknownItems`."""
        return self.writer.append_future(rows)

    async def append(self, rows: list[Row]) -> WriteResult:
        return await asyncio.wrap_future(self.writer.append_future(rows))

    def close(self) -> None:
        self.writer.close()

    # ---- reads ----------------------------------------------------------------------------------

    def history(self, user_id: str) -> list[str]:
        """The last ``window`` item tokens of ``user_id`` in event order (timestamp, then arrival); a new list."""
        return self.reader.user_history(user_id).items

    def user_history(self, user_id: str) -> UserHistory:
        """:meth:`history` and the counts of the user's known items, from one snapshot (a new object)."""
        return self.reader.user_history(user_id)

    def user_history_now(self, user_id: str, max_fold: int = 64) -> UserHistory | None:
        """:meth:`user_history` when it is cheap enough for an event loop's thread
        (:meth:`HistoryReader.user_history_now`); None: read it in a thread instead."""
        return self.reader.user_history_now(user_id, max_fold)

    def history_uncached(self, user_id: str) -> list[str]:
        """:meth:`history` straight from SQLite."""
        return self.reader.user_history_uncached(user_id).items

    def user_history_uncached(self, user_id: str) -> UserHistory:
        """:meth:`user_history` straight from SQLite."""
        return self.reader.user_history_uncached(user_id)

    def unknown_items(self, user_id: str) -> int:
        """How many distinct items outside the catalogue ``user_id`` stored (O(that number))."""
        return self.reader.unknown_items(user_id)

    def count(self) -> int:
        return self.reader.count()
