"""The event log's one writer: a thread that batches the queued requests and group-commits them.

Writers hand rows to the writer thread; it drains everything queued and applies it in one transaction,
each caller's rows under their own ``SAVEPOINT`` (a caller's request is all or nothing: a conflicting
re-sent event id or too many unknown items rejects that request alone, not the others in the same commit),
commits, and only then resolves each caller's future, so an acknowledged event is on disk
(``synchronous=FULL``: fsynced before the ack).

Event ids are scoped per user (``UNIQUE (user_id, event_id)``): re-sending an id with the same item (and
the same timestamp, when it carries one) is an idempotent duplicate; with anything else it is an
:class:`EventConflict`. Items outside the model's catalogue (``known``) are stored (the log keeps what it
was sent) but bounded: at most ``max_unknown`` distinct ones per user (:class:`TooManyUnknownItems`),
counted exactly inside the writer's transaction (``user_unknown``), so also across processes. Each insert
adds to the per-user counts (``user_items`` for known items, ``user_unknown`` for the others) in the same
transaction.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from serving.event_schema import connect

log = logging.getLogger(__name__)

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


class EventWriter:
    """The writer thread of one log file (set up already, :func:`serving.event_schema.open_log`); started here,
    stopped by :meth:`close`."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        max_batch: int,
        known: frozenset[str] | None,
        max_unknown: int | None,
    ):
        """``max_batch``: rows one commit takes at most (a request is never split); ``known``: the catalogue
        (None: every item is known); ``max_unknown``: distinct unknown items per user (None: no limit)."""
        self.path, self.synchronous, self.max_batch = path, synchronous, max_batch
        self.known, self.max_unknown = known, max_unknown
        self._queue: queue.Queue[tuple[list[Row], Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="event-writer", daemon=True)
        self._thread.start()

    def append_future(self, rows: list[Row]) -> Future:
        """Queue ``rows`` (one request: all stored or none); the future resolves to a :class:`WriteResult`
        after their commit, or fails with :class:`EventConflict` / :class:`TooManyUnknownItems`."""
        fut: Future = Future()
        self._queue.put((rows, fut))
        return fut

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _write_loop(self) -> None:
        conn = connect(self.path, self.synchronous)
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
