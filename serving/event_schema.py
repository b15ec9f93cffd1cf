"""The event log's file: its connections, its schema, the migration of an older layout, the counts' split.

Schema versions (``PRAGMA user_version``): 0 is the layout of :data:`SCHEMA_V1` (event ids unique across
all users; ``user_items`` counted every item by a trigger, or did not exist yet), migrated in place on open,
once, under ``BEGIN IMMEDIATE`` (workers opening the file together take turns; the first migrates, the
others find version 2), keeping every row's ``seq`` and the counts. Version 2: event ids unique per user,
the per-user counts of items in the catalogue in ``user_items`` and of the others in ``user_unknown`` (kept
by the writer, :mod:`serving.event_writer`). The split of ``user_items`` / ``user_unknown`` follows the
catalogue of the store that opened the file last (``store_meta``): a store opened with another catalogue
re-sorts the counts once. Workers sharing a file should share the catalogue.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
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


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A connection to the log in autocommit mode (transactions are explicit), usable from any thread."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def open_log(path: Path, synchronous: str, known: frozenset[str] | None) -> int:
    """Make ``path`` a version-2 log in WAL mode with its counts sorted by ``known`` (created, migrated or as
    it is, in one ``BEGIN IMMEDIATE`` transaction: workers opening it together take turns); the last ``seq``."""
    conn = connect(path, synchronous)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA busy_timeout={SETUP_WAIT_MS}")  # outwait another worker's migration
        conn.execute("BEGIN IMMEDIATE")  # workers sharing the file: one at a time
        try:
            setup(conn, path, known)
            watermark = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return watermark


def setup(conn: sqlite3.Connection, path: Path, known: frozenset[str] | None) -> None:
    """Create, or migrate, the schema, then sort the counts by the catalogue ``known`` (in the caller's
    ``BEGIN IMMEDIATE`` transaction: concurrent openers run this one after the other)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"{path}: event log schema version {version} is newer than {SCHEMA_VERSION}")
    if version < SCHEMA_VERSION:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='events'").fetchone()
        if exists:
            migrate_v1(conn, path)
        else:
            for stmt in SCHEMA:
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    sort_counts(conn, known)


def migrate_v1(conn: sqlite3.Connection, path: Path) -> None:
    """Version 0 → 2: event ids unique per user (the table is rebuilt, every row keeps its ``seq``);
    the counts are kept (or made, for a log from before ``user_items``) and maintained by the store."""
    n = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    log.info("migrating event log %s (%d events) to schema version %d", path, n, SCHEMA_VERSION)
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


def sort_counts(conn: sqlite3.Connection, known: frozenset[str] | None) -> None:
    """Counts of items in the catalogue ``known`` in ``user_items``, of the others in ``user_unknown`` (a full
    pass, only when the file was last opened with another catalogue, or never sorted)."""
    mark = fingerprint(known)
    row = conn.execute("SELECT value FROM store_meta WHERE key='catalogue'").fetchone()
    if row is not None and row[0] == mark:
        return
    move = "INSERT INTO {dst} SELECT user_id, item_id, n FROM {src} WHERE {cond} " \
           "ON CONFLICT (user_id, item_id) DO UPDATE SET n = n + excluded.n"
    if known is None:
        conn.execute(move.format(dst="user_items", src="user_unknown", cond="true"))
        conn.execute("DELETE FROM user_unknown")
    else:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS catalogue (item_id TEXT PRIMARY KEY) WITHOUT ROWID")
        conn.execute("DELETE FROM temp.catalogue")
        conn.executemany("INSERT INTO temp.catalogue VALUES (?)", ((t,) for t in known))
        outside = "item_id NOT IN (SELECT item_id FROM temp.catalogue)"
        inside = "item_id IN (SELECT item_id FROM temp.catalogue)"
        conn.execute(move.format(dst="user_unknown", src="user_items", cond=outside))
        conn.execute(f"DELETE FROM user_items WHERE {outside}")
        conn.execute(move.format(dst="user_items", src="user_unknown", cond=inside))
        conn.execute(f"DELETE FROM user_unknown WHERE {inside}")
        conn.execute("DROP TABLE temp.catalogue")
    conn.execute("INSERT OR REPLACE INTO store_meta VALUES ('catalogue', ?)", (mark,))


def fingerprint(known: frozenset[str] | None) -> str:
    """The catalogue as ``store_meta`` records it: ``all`` (None) or its size and a SHA-256 of its sorted ids."""
    if known is None:
        return "all"
    digest = hashlib.sha256()
    for item in sorted(known):
        digest.update(item.encode("utf-8", "surrogatepass") + b"\0")
    return f"{len(known)}:{digest.hexdigest()}"
