"""The device's durable event log: SQLite in WAL mode, idempotent on the event id, group commit.

Writers hand rows to one writer thread; it drains everything queued, inserts it in one transaction
(``INSERT OR IGNORE`` on the event-id primary key) and commits, and only then resolves each caller's
future, so an acknowledged event is on disk (``synchronous=FULL``: fsynced before the ack). Readers
use their own per-thread connection; WAL lets them read while the writer writes, also across worker
processes sharing the file.

History reads are served from an in-memory per-user cache (LRU over ``history_cache_users`` users). It
stays exact across processes without any notification: before each read, the rows committed since the
last read (``seq > watermark``, a range scan on the primary key, usually empty) are folded into the
cached users. Commits are serialized and ``seq`` grows with them, so what a snapshot shows is always a
prefix of ``seq``; a user missing from the cache is loaded up to the same watermark.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import queue
import sqlite3
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, ts, seq);
"""

Row = tuple[str, str, str, float]  # event_id, user_id, item_id, ts


@dataclass
class WriteResult:
    inserted: int
    duplicates: int


@dataclass
class _History:
    """One user's items in history order, with their ``(ts, seq)`` sort keys."""

    keys: list[tuple[float, int]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)

    def add(self, ts: float, seq: int, item: str) -> None:
        key = (ts, seq)
        if not self.keys or key > self.keys[-1]:
            self.keys.append(key)
            self.items.append(item)
        else:  # an event with an older timestamp goes where the ``ORDER BY ts, seq`` query would put it
            at = bisect.bisect(self.keys, key)
            self.keys.insert(at, key)
            self.items.insert(at, item)


class EventStore:
    """Append-only user events in one SQLite file; :meth:`append` is safe to await from any event loop."""

    def __init__(
        self, path: Path, synchronous: str = "FULL", max_batch: int = 10_000, history_cache_users: int = 10_000
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[list[Row], Future] | None] = queue.Queue()
        self._local = threading.local()
        self._cache: OrderedDict[str, _History] = OrderedDict()
        self._cache_users = history_cache_users
        self._cache_lock = threading.Lock()
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            self._watermark = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        self._writer = threading.Thread(target=self._write_loop, name="event-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    # ---- writes ---------------------------------------------------------------------------------

    def append_future(self, rows: list[Row]) -> Future:
        """Queue ``rows``; the future resolves to a :class:`WriteResult` after their commit."""
        fut: Future = Future()
        self._queue.put((rows, fut))
        return fut

    async def append(self, rows: list[Row]) -> WriteResult:
        return await asyncio.wrap_future(self.append_future(rows))

    def _write_loop(self) -> None:
        conn = self._connect()
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            n_rows = len(first[0])
            while n_rows < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
                n_rows += len(nxt[0])
            self._commit(conn, batch)
        conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[list[Row], Future]]) -> None:
        results = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for rows, _ in batch:
                before = conn.total_changes
                conn.executemany("INSERT OR IGNORE INTO events (event_id, user_id, item_id, ts) VALUES (?,?,?,?)", rows)
                inserted = conn.total_changes - before
                results.append(WriteResult(inserted, len(rows) - inserted))
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
            log.exception("event batch failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, fut in batch:
                fut.set_exception(exc)
            return
        for (_, fut), res in zip(batch, results):
            fut.set_result(res)

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=10)

    # ---- reads ----------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
        return conn

    def history(self, user_id: str) -> list[str]:
        """All item tokens of ``user_id`` in event order (timestamp, then arrival); a new list."""
        if self._cache_users <= 0:
            return self.history_uncached(user_id)
        with self._cache_lock:
            conn = self._reader()
            self._catch_up(conn)
            hist = self._cache.get(user_id)
            if hist is None:
                hist = _History()
                rows = conn.execute(
                    "SELECT ts, seq, item_id FROM events WHERE user_id=? AND seq<=? ORDER BY ts, seq",
                    (user_id, self._watermark),
                )
                for ts, seq, item in rows:
                    hist.keys.append((ts, seq))
                    hist.items.append(item)
                self._cache[user_id] = hist
                while len(self._cache) > self._cache_users:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(user_id)
            return list(hist.items)

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """Fold the rows committed since the last read (by any process) into the cached users."""
        rows = conn.execute(
            "SELECT seq, user_id, item_id, ts FROM events WHERE seq>? ORDER BY seq", (self._watermark,)
        ).fetchall()
        cache = self._cache
        for seq, user, item, ts in rows:
            hist = cache.get(user)
            if hist is not None:
                hist.add(ts, seq, item)
        if rows:
            self._watermark = rows[-1][0]

    def history_uncached(self, user_id: str) -> list[str]:
        """:meth:`history` straight from SQLite."""
        rows = self._reader().execute("SELECT item_id FROM events WHERE user_id=? ORDER BY ts, seq", (user_id,))
        return [r[0] for r in rows]

    def count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM events").fetchone()[0])

