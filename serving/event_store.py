"""The device's durable event log: SQLite in WAL mode, idempotent per user on the event id, group commit.

Writers hand rows to one writer thread; it drains everything queued and applies it in one transaction,
each caller's rows under their own ``SAVEPOINT`` (a caller's request is all or nothing: a conflicting
re-sent event id or too many unknown items rejects that request alone, not the others in the same commit),
commits, and only then resolves each caller's future, so an acknowledged event is on disk
(``synchronous=FULL``: fsynced before the ack). Readers use their own per-thread connection; WAL lets them
read while the writer writes, also across worker processes sharing the file.

Event ids are scoped per user (``UNIQUE (user_id, event_id)``): re-sending an id with the same item (and
the same timestamp, when it carries one) is an idempotent duplicate; with anything else it is an
:class:`EventConflict`. Items outside the model's catalogue (``known``) are stored (the log keeps what it
was sent) but bounded: at most ``max_unknown`` distinct ones per user (:class:`TooManyUnknownItems`),
counted exactly inside the writer's transaction (``user_unknown``), so also across processes.

History reads are bounded: a user's last ``window`` events (``ORDER BY ts DESC, seq DESC LIMIT window`` on
the ``(user_id, ts, seq)`` index) and the per-item counts of their *known* items (``user_items``; unknown
items are counted apart in ``user_unknown``, both kept by the writer in the same transaction as each
insert), so a read costs at most ``window`` + catalogue rows, however many events (or unknown items) the
user stored. Reads run in one read transaction (one WAL snapshot) and are served from an in-memory per-user
cache (LRU over ``history_cache_users`` users). It stays exact across processes without any notification:
before each read, the rows committed since the last read (``seq > watermark``, a range scan on the primary
key, usually empty) are folded into the cached users; after a gap of more than ``catch_up_rows`` rows the
cache is dropped instead. Callers on an event loop read a cached user with little to fold in on the loop's thread
(:meth:`EventStore.user_history_now`, a few µs) and anything else in a thread (a thread hop costs ~0.1 ms).

Schema versions (``PRAGMA user_version``): 0 is the layout of :data:`SCHEMA_V1` (event ids unique across
all users; ``user_items`` counted every item by a trigger, or did not exist yet), migrated in place on open,
once, under ``BEGIN IMMEDIATE`` (workers opening the file together take turns; the first migrates, the
others find version 2), keeping every row's ``seq`` and the counts. The split of ``user_items`` /
``user_unknown`` follows the catalogue of the store that opened the file last (``store_meta``): a store
opened with another catalogue re-sorts the counts once. Workers sharing a file should share the catalogue.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
SETUP_WAIT_MS = 600_000  # how long an opening worker waits for another one's schema set-up

# The layout before per-user event ids (user_version 0); kept to recognise and migrate it, and for tests.
SCHEMA_V1 = """
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

_EVENTS = """CREATE TABLE {name} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts REAL NOT NULL,
    UNIQUE (user_id, event_id)
)"""
_COUNTS = """CREATE TABLE IF NOT EXISTS {name} (
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (user_id, item_id)
) WITHOUT ROWID"""
# Version 2, one statement each (they run inside the setup transaction, not as a script).
SCHEMA = [
    _EVENTS.format(name="events"),
    "CREATE INDEX events_user ON events (user_id, ts, seq)",
    _COUNTS.format(name="user_items"),  # per user: events of each item in the catalogue
    _COUNTS.format(name="user_unknown"),  # per user: events of each item outside it (at most max_unknown rows)
    "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
]

INSERT = "INSERT OR IGNORE INTO events (event_id, user_id, item_id, ts) VALUES (?,?,?,?)"
STORED = "SELECT item_id, ts FROM events WHERE user_id=? AND event_id=?"
_UPSERT = "INSERT INTO {table} VALUES (?,?,?) ON CONFLICT (user_id, item_id) DO UPDATE SET n = n + excluded.n"

Row = tuple[str, str, str, float | None]  # event_id, user_id, item_id, ts (None: the store stamps commit time)


class EventRejected(ValueError):
    """A caller's request was rejected whole: none of its rows is stored."""


class EventConflict(EventRejected):
    """Event ids the user already stored (or sent twice in the request) with another item or timestamp.

    ``indexes``: the offending rows' positions in the request; ``event_ids``: their event ids (same order);
    ``user_ids``: their users."""

    def __init__(self, indexes: Sequence[int], event_ids: Sequence[str], user_ids: Sequence[str]):
        self.indexes, self.event_ids, self.user_ids = list(indexes), list(event_ids), list(user_ids)
        shown = ", ".join(f"row {i} (event_id {e!r})" for i, e in zip(self.indexes[:5], self.event_ids[:5]))
        more = f" and {len(self.indexes) - 5} more" if len(self.indexes) > 5 else ""
        super().__init__(
            f"{len(self.indexes)} event id(s) already used by the same user for another event: {shown}{more}; "
            "a re-sent event must carry the same item_id (and timestamp, when it has one); nothing of this "
            "request was stored"
        )


class TooManyUnknownItems(EventRejected):
    """The request would take ``user_id`` past ``cap`` distinct item ids outside the catalogue.

    ``index``: the first row (position in the request) that goes past it; ``item_id``: its item."""

    def __init__(self, user_id: str, index: int, cap: int, item_id: str):
        self.user_id, self.index, self.cap, self.item_id = user_id, index, cap, item_id
        super().__init__(
            f"user {user_id!r} may store at most {cap} distinct item ids outside the model's catalogue; "
            f"row {index} (item_id {item_id!r}) would go past that; nothing of this request was stored"
        )


@dataclass
class WriteResult:
    inserted: int
    duplicates: int


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


def _fingerprint(known: frozenset[str] | None) -> str:
    if known is None:
        return "all"
    digest = hashlib.sha256()
    for item in sorted(known):
        digest.update(item.encode("utf-8", "surrogatepass") + b"\0")
    return f"{len(known)}:{digest.hexdigest()}"


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
        self.synchronous = synchronous
        self.max_batch = max_batch
        self.known: frozenset[str] | None = None if known is None else frozenset(map(str, known))
        if max_unknown is not None and max_unknown < 0:
            raise ValueError(f"max_unknown must be >= 0 or None, got {max_unknown}")
        self.max_unknown = max_unknown
        self._queue: queue.Queue[tuple[list[Row], Future] | None] = queue.Queue()
        self._local = threading.local()
        self._cache: OrderedDict[str, _History] = OrderedDict()
        self._cache_users = history_cache_users
        self._cache_lock = threading.Lock()
        self.window, self.catch_up_rows = window, catch_up_rows
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={SETUP_WAIT_MS}")  # outwait another worker's migration
            conn.execute("BEGIN IMMEDIATE")  # workers sharing the file: one at a time
            try:
                self._setup(conn)
                self._watermark = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
        self._writer = threading.Thread(target=self._write_loop, name="event-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return conn

    # ---- schema ---------------------------------------------------------------------------------

    def _setup(self, conn: sqlite3.Connection) -> None:
        """Create, or migrate, the schema, then sort the counts by this store's catalogue (in the caller's
        ``BEGIN IMMEDIATE`` transaction: concurrent openers run this one after the other)."""
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: event log schema version {version} is newer than {SCHEMA_VERSION}")
        if version < SCHEMA_VERSION:
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='events'").fetchone()
            if exists:
                self._migrate_v1(conn)
            else:
                for stmt in SCHEMA:
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._sort_counts(conn)

    def _migrate_v1(self, conn: sqlite3.Connection) -> None:
        """Version 0 → 2: event ids unique per user (the table is rebuilt, every row keeps its ``seq``);
        the counts are kept (or made, for a log from before ``user_items``) and maintained by the store."""
        n = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        log.info("migrating event log %s (%d events) to schema version %d", self.path, n, SCHEMA_VERSION)
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        last_seq = int(row[0]) if row else 0
        conn.execute(_COUNTS.format(name="user_items"))
        conn.execute(  # a log written before user_items existed: count it once
            "INSERT INTO user_items SELECT user_id, item_id, COUNT(*) FROM events "
            "WHERE NOT EXISTS (SELECT 1 FROM user_items) GROUP BY user_id, item_id"
        )
        conn.execute("DROP TRIGGER IF EXISTS events_user_items")
        conn.execute("DROP TABLE IF EXISTS events_v2")
        conn.execute(_EVENTS.format(name="events_v2"))
        conn.execute(
            "INSERT INTO events_v2 (seq, event_id, user_id, item_id, ts) "
            "SELECT seq, event_id, user_id, item_id, ts FROM events ORDER BY seq"
        )
        conn.execute("DROP TABLE events")  # and its index
        conn.execute("ALTER TABLE events_v2 RENAME TO events")
        conn.execute("CREATE INDEX events_user ON events (user_id, ts, seq)")
        if last_seq:  # AUTOINCREMENT never hands out a seq again, even one whose row is gone
            kept = conn.execute("UPDATE sqlite_sequence SET seq=MAX(seq, ?) WHERE name='events'", (last_seq,))
            if kept.rowcount == 0:
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (last_seq,))
        for stmt in SCHEMA[2:]:
            conn.execute(stmt)

    def _sort_counts(self, conn: sqlite3.Connection) -> None:
        """Counts of items in this store's catalogue in ``user_items``, of the others in ``user_unknown``
        (a full pass, only when the file was last opened with another catalogue, or never sorted)."""
        fingerprint = _fingerprint(self.known)
        row = conn.execute("SELECT value FROM store_meta WHERE key='catalogue'").fetchone()
        if row is not None and row[0] == fingerprint:
            return
        move = "INSERT INTO {dst} SELECT user_id, item_id, n FROM {src} WHERE {cond} " \
               "ON CONFLICT (user_id, item_id) DO UPDATE SET n = n + excluded.n"
        if self.known is None:
            conn.execute(move.format(dst="user_items", src="user_unknown", cond="true"))
            conn.execute("DELETE FROM user_unknown")
        else:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS catalogue (item_id TEXT PRIMARY KEY) WITHOUT ROWID")
            conn.execute("DELETE FROM temp.catalogue")
            conn.executemany("INSERT INTO temp.catalogue VALUES (?)", ((t,) for t in self.known))
            outside = "item_id NOT IN (SELECT item_id FROM temp.catalogue)"
            inside = "item_id IN (SELECT item_id FROM temp.catalogue)"
            conn.execute(move.format(dst="user_unknown", src="user_items", cond=outside))
            conn.execute(f"DELETE FROM user_items WHERE {outside}")
            conn.execute(move.format(dst="user_items", src="user_unknown", cond=inside))
            conn.execute(f"DELETE FROM user_unknown WHERE {inside}")
            conn.execute("DROP TABLE temp.catalogue")
        conn.execute("INSERT OR REPLACE INTO store_meta VALUES ('catalogue', ?)", (fingerprint,))

    # ---- writes ---------------------------------------------------------------------------------

    def append_future(self, rows: list[Row]) -> Future:
        """Queue ``rows`` (one request: all stored or none); the future resolves to a :class:`WriteResult`
        after their commit, or fails with :class:`EventConflict` / :class:`TooManyUnknownItems`."""
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
        results: list[WriteResult | Exception] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()  # "server time" rows: stamped once the write lock is held
            for rows, _ in batch:
                conn.execute("SAVEPOINT caller")
                try:
                    results.append(self._apply(conn, rows, now))
                except Exception as exc:  # noqa: BLE001 - this caller's request alone is rejected
                    conn.execute("ROLLBACK TO caller")  # fails (and fails the batch) if SQLite dropped it all
                    results.append(exc)
                conn.execute("RELEASE caller")
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
            log.exception("event batch failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, fut in batch:
                fut.set_exception(exc)
            return
        for (_, fut), res in zip(batch, results):
            if isinstance(res, Exception):
                if not isinstance(res, EventRejected):
                    log.error("event request failed: %r", res)
                fut.set_exception(res)
            else:
                fut.set_result(res)

    def _apply(self, conn: sqlite3.Connection, rows: list[Row], now: float) -> WriteResult:
        """Insert one caller's rows (inside its savepoint); raise :class:`EventRejected` to reject them."""
        stamped = [(e, u, i, now if t is None else float(t)) for e, u, i, t in rows]
        if self.max_unknown is not None and self.known is not None:
            self._check_unknown(conn, stamped)
        if max(conn.executemany(INSERT, stamped).rowcount, 0) == len(stamped):
            new = stamped  # the usual case: every row new, no duplicate to compare
        else:  # some ids were there already (or twice in the request): again row by row, comparing each
            conn.execute("ROLLBACK TO caller")
            new, bad = [], []
            for idx, row in enumerate(stamped):
                if conn.execute(INSERT, row).rowcount > 0:
                    new.append(row)
                    continue
                item, ts = conn.execute(STORED, (row[1], row[0])).fetchone()
                if item != row[2] or (rows[idx][3] is not None and ts != row[3]):
                    bad.append(idx)
            if bad:
                raise EventConflict(bad, [stamped[i][0] for i in bad], [stamped[i][1] for i in bad])
        self._count(conn, new)
        return WriteResult(len(new), len(stamped) - len(new))

    def _check_unknown(self, conn: sqlite3.Connection, rows: list[tuple[str, str, str, float]]) -> None:
        """Reject the request if it takes a user past ``max_unknown`` distinct unknown items (reads run in the
        writer's transaction: exact, also with other processes writing). O(cap) per user with unknown rows."""
        cap, known = self.max_unknown, self.known
        assert cap is not None and known is not None
        seen: dict[str, set[str]] = {}  # user → unknown items of this request checked so far
        total: dict[str, int] = {}  # user → distinct unknown items stored + new in this request so far
        for idx, (_, user, item, _) in enumerate(rows):
            if item in known:
                continue
            checked = seen.get(user)
            if checked is None:
                checked = seen[user] = set()
                total[user] = int(conn.execute(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM user_unknown WHERE user_id=? LIMIT ?)", (user, cap + 1)
                ).fetchone()[0])
            if item in checked:
                continue
            checked.add(item)
            if conn.execute("SELECT 1 FROM user_unknown WHERE user_id=? AND item_id=?", (user, item)).fetchone():
                continue
            total[user] += 1
            if total[user] > cap:
                raise TooManyUnknownItems(user, idx, cap, item)

    def _count(self, conn: sqlite3.Connection, rows: list[tuple[str, str, str, float]]) -> None:
        """Add inserted rows to the per-user item counts: known items to ``user_items``, others to ``user_unknown``."""
        counts = Counter((user, item) for _, user, item, _ in rows)
        known = self.known
        if known is None:
            conn.executemany(_UPSERT.format(table="user_items"), ((u, i, n) for (u, i), n in counts.items()))
            return
        inside = [(u, i, n) for (u, i), n in counts.items() if i in known]
        outside = [(u, i, n) for (u, i), n in counts.items() if i not in known]
        conn.executemany(_UPSERT.format(table="user_items"), inside)
        if outside:
            conn.executemany(_UPSERT.format(table="user_unknown"), outside)

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
        """:meth:`history` and the counts of the user's known items, from one snapshot (a new object)."""
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

    def _cached_history(self, user_id: str, max_fold: int | None) -> UserHistory | None:
        """The cached read under ``_cache_lock``; None when more than ``max_fold`` rows would be folded in."""
        conn = self._reader()
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

    def unknown_items(self, user_id: str) -> int:
        """How many distinct items outside the catalogue ``user_id`` stored (O(that number))."""
        return int(self._reader().execute(
            "SELECT COUNT(*) FROM user_unknown WHERE user_id=?", (user_id,)
        ).fetchone()[0])

    def count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM events").fetchone()[0])
