"""Per-user history reads of the event log, bounded, with an in-memory per-user cache kept exact by catch-up.

A read returns a user's last ``window`` events (``ORDER BY ts DESC, seq DESC LIMIT window`` on the
``(user_id, ts, seq)`` index) and the per-item counts of their *known* items (``user_items``; unknown items
are counted apart in ``user_unknown``, both kept by the writer in the same transaction as each insert), so a
read costs at most ``window`` + catalogue rows, however many events (or unknown items) the user stored.
Readers use their own per-thread connection; WAL lets them read while the writer writes, also across worker
processes sharing the file. Reads run in one read transaction (one WAL snapshot) and are served from an
in-memory per-user cache (LRU over ``cache_users`` users). It stays exact across processes without any
notification: before each read, the rows committed since the last read (``seq > watermark``, a range scan on
the primary key, usually empty) are folded into the cached users; after a gap of more than ``catch_up_rows``
rows the cache is dropped instead. Callers on an event loop read a cached user with little to fold in on the
loop's thread (:meth:`HistoryReader.user_history_now`, a few µs) and anything else in a thread (a thread hop
costs ~0.1 ms).
"""

from __future__ import annotations

import bisect
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from serving.event_schema import connect


@dataclass
class UserHistory:
    """A user's last ``window`` items in history order (timestamp, then arrival; unknown items included) and
    the counts of the user's items in the catalogue (unknown ones are not counted)."""

    items: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        """The user's events on items in the catalogue (a sum over at most catalogue-many counts)."""
        return sum(self.counts.values())


@dataclass
class _History:
    """One user's last ``window`` items in history order, with their ``(ts, seq)`` sort keys, and known-item counts."""

    window: int | None
    known: frozenset[str] | None
    keys: list[tuple[float, int]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, ts: float, seq: int, item: str) -> None:
        if self.known is None or item in self.known:
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


class HistoryReader:
    """Reads of one log file (set up already, its last ``seq`` at open: ``watermark``), from any thread."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        window: int | None,
        known: frozenset[str] | None,
        cache_users: int,
        catch_up_rows: int,
        watermark: int,
    ):
        """``window``: how many recent items a read returns (None: all); ``known``: the catalogue (None: every
        item is known); ``cache_users``: users the cache holds (0: no cache)."""
        self.path, self.synchronous = path, synchronous
        self.window, self.known = window, known
        self.catch_up_rows = catch_up_rows
        self._local = threading.local()
        self._cache: OrderedDict[str, _History] = OrderedDict()
        self._cache_users = cache_users
        self._cache_lock = threading.Lock()
        self._watermark = watermark

    def connection(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on its first read)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, self.synchronous)
            conn.execute("PRAGMA query_only=ON")
        return conn

    def user_history(self, user_id: str) -> UserHistory:
        """The user's last ``window`` items and the counts of their known items, from one snapshot (a new object)."""
        if self._cache_users <= 0:
            return self.user_history_uncached(user_id)
        with self._cache_lock:
            return self._cached_history(user_id, None)

    def user_history_now(self, user_id: str, max_fold: int = 64) -> UserHistory | None:
        """:meth:`user_history` when it is cheap enough for an event loop's thread (a few µs: the user is cached, at
        most ``max_fold`` new rows to fold in, no other reader at work); None: read it in a thread instead."""
        if self._cache_users <= 0 or user_id not in self._cache or not self._cache_lock.acquire(blocking=False):
            return None
        try:
            return self._cached_history(user_id, max_fold)
        finally:
            self._cache_lock.release()

    def user_history_uncached(self, user_id: str) -> UserHistory:
        """:meth:`user_history` straight from SQLite."""
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            return self._load(conn, user_id).copy()
        finally:
            conn.execute("COMMIT")

    def unknown_items(self, user_id: str) -> int:
        """How many distinct items outside the catalogue ``user_id`` stored (O(that number))."""
        return int(self.connection().execute(
            "SELECT COUNT(*) FROM user_unknown WHERE user_id=?", (user_id,)
        ).fetchone()[0])

    def count(self) -> int:
        """Events stored, of every user."""
        return int(self.connection().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def _cached_history(self, user_id: str, max_fold: int | None) -> UserHistory | None:
        """The cached read under ``_cache_lock``; None when more than ``max_fold`` rows would be folded in."""
        conn = self.connection()
        conn.execute("BEGIN")  # one snapshot for the catch-up and the user's rows
        try:
            latest = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
            if max_fold is not None and (latest - self._watermark > max_fold or user_id not in self._cache):
                return None
            self._catch_up(conn, latest)
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
        """The user's last ``window`` events (index range scan, newest first) and known-item counts."""
        hist = _History(self.window, self.known)
        limit = -1 if self.window is None else self.window
        rows = conn.execute(
            "SELECT ts, seq, item_id FROM events WHERE user_id=? ORDER BY ts DESC, seq DESC LIMIT ?", (user_id, limit)
        ).fetchall()
        for ts, seq, item in reversed(rows):
            hist.keys.append((ts, seq))
            hist.items.append(item)
        counts = conn.execute("SELECT item_id, n FROM user_items WHERE user_id=?", (user_id,))
        known = self.known  # user_items holds the catalogue's items already; this guards a file sorted by another
        hist.counts = dict(counts) if known is None else {t: n for t, n in counts if t in known}
        return hist

    def _catch_up(self, conn: sqlite3.Connection, latest: int) -> None:
        """Fold the rows committed since the last read (by any process, up to ``latest``) into the cached users."""
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
