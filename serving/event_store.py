"""The device's durable event log: SQLite in WAL mode, idempotent on the event id, group commit.

Writers hand rows to one writer thread; it drains everything queued, inserts it in one transaction
(``INSERT OR IGNORE`` on the event-id primary key) and commits, and only then resolves each caller's
future, so an acknowledged event is on disk (``synchronous=FULL``: fsynced before the ack). Readers
use their own per-thread connection; WAL lets them read while the writer writes, also across worker
processes sharing the file.

History reads are bounded: a user's last ``window`` events (``ORDER BY ts DESC, seq DESC LIMIT window`` on
the ``(user_id, ts, seq)`` index) and their per-item counts (``user_items``, kept by a trigger in the same
transaction as each insert), so a user with 200k events costs as much as one with ``window``. Reads run
in one read transaction (one WAL snapshot) and are served from an in-memory per-user cache (LRU over
``history_cache_users`` users). It stays exact across processes without any notification: before each
read, the rows committed since the last read (``seq > watermark``, a range scan on the primary key,
usually empty) are folded into the cached users; after a gap of more than ``catch_up_rows`` rows the
cache is dropped instead. Callers on an event loop run reads in a thread (they touch SQLite).
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
CREATE TABLE IF NOT EXISTS user_items (
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (user_id, item_id)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS events_user_items AFTER INSERT ON events BEGIN
    INSERT INTO user_items VALUES (NEW.user_id, NEW.item_id, 1)
        ON CONFLICT (user_id, item_id) DO UPDATE SET n = n + 1;
END;
-- a log written before user_items existed: count it once
INSERT INTO user_items SELECT user_id, item_id, COUNT(*) FROM events
    WHERE NOT EXISTS (SELECT 1 FROM user_items) GROUP BY user_id, item_id;
"""

INSERT = "INSERT OR IGNORE INTO events (event_id, user_id, item_id, ts) VALUES (?,?,?,?)"
Row = tuple[str, str, str, float]  # event_id, user_id, item_id, ts


@dataclass
class WriteResult:
    inserted: int
    duplicates: int


@dataclass
class UserHistory:
    """A user's last ``window`` items in history order (timestamp, then arrival) and every item's count."""

    items: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return sum(self.counts.values())


@dataclass
class _History:
    """One user's last ``window`` items in history order, with their ``(ts, seq)`` sort keys, and item counts."""

    window: int | None
    keys: list[tuple[float, int]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, ts: float, seq: int, item: str) -> None:
        self.counts[item] = self.counts.get(item, 0) + 1
        key = (ts, seq)
        if not self.keys or key > self.keys[-1]:
            self.keys.append(key)
            self.items.append(item)
        else:  # an event with an older timestamp goes where the ``ORDER BY ts, seq`` query would put it
            at = bisect.bisect(self.keys, key)
            self.keys.insert(at, key)
            self.items.insert(at, item)
        if self.window is not None and len(self.items) > self.window:
            del self.keys[0], self.items[0]

    def copy(self) -> UserHistory:
        return UserHistory(list(self.items), dict(self.counts))


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
    ):
        """``window``: how many recent items a history read returns (None: all; the device: ``max_seq_len``)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[list[Row], Future] | None] = queue.Queue()
        self._local = threading.local()
        self._cache: OrderedDict[str, _History] = OrderedDict()
        self._cache_users = history_cache_users
        self._cache_lock = threading.Lock()
        self.window, self.catch_up_rows = window, catch_up_rows
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")  # workers sharing the file: one at a time
            self._watermark = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        finally:
            conn.close()
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
                cur = conn.executemany(INSERT, rows)
                inserted = max(cur.rowcount, 0)  # rows of this statement (total_changes counts the trigger's too)
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
        """The last ``window`` item tokens of ``user_id`` in event order (timestamp, then arrival); a new list."""
        return self.user_history(user_id).items

    def user_history(self, user_id: str) -> UserHistory:
        """:meth:`history` and the counts of every item of the user, from one snapshot (a new object)."""
        if self._cache_users <= 0:
            return self.user_history_uncached(user_id)
        with self._cache_lock:
            conn = self._reader()
            conn.execute("BEGIN")  # one snapshot for the catch-up and the user's rows
            try:
                self._catch_up(conn)
                hist = self._cache.get(user_id)
                if hist is None:
                    hist = self._load(conn, user_id)
                    self._cache[user_id] = hist
                    while len(self._cache) > self._cache_users:
                        self._cache.popitem(last=False)
                else:
                    self._cache.move_to_end(user_id)
            finally:
                conn.execute("COMMIT")
            return hist.copy()

    def _load(self, conn: sqlite3.Connection, user_id: str) -> _History:
        """The user's last ``window`` events (index range scan, newest first) and item counts."""
        hist = _History(self.window)
        limit = -1 if self.window is None else self.window
        rows = conn.execute(
            "SELECT ts, seq, item_id FROM events WHERE user_id=? ORDER BY ts DESC, seq DESC LIMIT ?", (user_id, limit)
        ).fetchall()
        for ts, seq, item in reversed(rows):
            hist.keys.append((ts, seq))
            hist.items.append(item)
        hist.counts = dict(conn.execute("SELECT item_id, n FROM user_items WHERE user_id=?", (user_id,)))
        return hist

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """Fold the rows committed since the last read (by any process) into the cached users."""
        latest = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        if latest == self._watermark:
            return
        if not self._cache or latest - self._watermark > self.catch_up_rows:  # cheaper to reload who is asked
            self._cache.clear()
            self._watermark = latest
            return
        rows = conn.execute(
            "SELECT seq, user_id, item_id, ts FROM events WHERE seq>? AND seq<=? ORDER BY seq",
            (self._watermark, latest),
        )
        cache = self._cache
        for seq, user, item, ts in rows:
            hist = cache.get(user)
            if hist is not None:
                hist.add(ts, seq, item)
        self._watermark = latest

    def history_uncached(self, user_id: str) -> list[str]:
        """:meth:`history` straight from SQLite."""
        return self.user_history_uncached(user_id).items

    def user_history_uncached(self, user_id: str) -> UserHistory:
        """:meth:`user_history` straight from SQLite."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return self._load(conn, user_id).copy()
        finally:
            conn.execute("COMMIT")

    def count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM events").fetchone()[0])
