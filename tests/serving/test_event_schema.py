"""The event log's file on its own: a new file gets version 2, an old one is migrated keeping its ``seq``s,
the counts follow the catalogue of the last opener, a newer file is refused."""

from __future__ import annotations

import sqlite3

import pytest

from serving.event_schema import SCHEMA_V1, SCHEMA_VERSION, connect, fingerprint, open_log, sort_counts


def rows_of(path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def test_a_new_file_is_version_2_in_wal_mode(tmp_path):
    path = tmp_path / "events.db"
    assert open_log(path, "NORMAL", None) == 0
    assert rows_of(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows_of(path, "PRAGMA journal_mode") == [("wal",)]
    tables = {name for (name,) in rows_of(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"events", "user_items", "user_unknown", "store_meta"} <= tables
    assert rows_of(path, "SELECT value FROM store_meta") == [("all",)]
    conn = connect(path, "NORMAL")
    try:
        conn.execute("INSERT INTO events (event_id, user_id, item_id, ts) VALUES ('e', 'u', '1', 1.0)")
        conn.execute("INSERT INTO events (event_id, user_id, item_id, ts) VALUES ('e', 'v', '1', 1.0)")  # per user
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO events (event_id, user_id, item_id, ts) VALUES ('e', 'u', '2', 1.0)")
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,) and not conn.in_transaction
    finally:
        conn.close()
    assert open_log(path, "NORMAL", None) == 2  # the last seq: where the reader's catch-up starts


def test_an_old_file_is_migrated_keeping_seq_and_sorting_the_counts(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V1)
        db.executemany("INSERT INTO events (event_id, user_id, item_id, ts) VALUES (?,?,?,?)",
                       [("a", "u", "1", 1.0), ("b", "u", "x", 2.0), ("c", "v", "1", 3.0), ("d", "v", "x", 4.0)])
        db.execute("DELETE FROM events WHERE event_id='d'")  # seq 4 is never handed out again
    assert open_log(path, "NORMAL", frozenset({"1"})) == 3
    assert rows_of(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows_of(path, "SELECT seq, event_id FROM events ORDER BY seq") == [(1, "a"), (2, "b"), (3, "c")]
    assert rows_of(path, "SELECT seq FROM sqlite_sequence WHERE name='events'") == [(4,)]
    assert rows_of(path, "SELECT name FROM sqlite_master WHERE type='trigger'") == []
    assert sorted(rows_of(path, "SELECT * FROM user_items")) == [("u", "1", 1), ("v", "1", 1)]
    assert sorted(rows_of(path, "SELECT * FROM user_unknown")) == [("u", "x", 1), ("v", "x", 1)]  # the trigger's


def test_the_counts_follow_the_last_openers_catalogue(tmp_path):
    path = tmp_path / "events.db"
    open_log(path, "NORMAL", None)
    conn = connect(path, "NORMAL")
    try:
        conn.executemany("INSERT INTO user_items VALUES (?,?,?)", [("u", "1", 2), ("u", "2", 1)])
        sort_counts(conn, frozenset({"2"}))
        assert conn.execute("SELECT * FROM user_items").fetchall() == [("u", "2", 1)]
        assert conn.execute("SELECT * FROM user_unknown").fetchall() == [("u", "1", 2)]
        conn.execute("UPDATE user_unknown SET n = 5")  # the same catalogue again: no pass over the counts
        sort_counts(conn, frozenset({"2"}))
        assert conn.execute("SELECT n FROM user_unknown").fetchall() == [(5,)]
        sort_counts(conn, None)  # no catalogue: every item counts
        assert sorted(conn.execute("SELECT * FROM user_items").fetchall()) == [("u", "1", 5), ("u", "2", 1)]
        assert conn.execute("SELECT * FROM user_unknown").fetchall() == []
    finally:
        conn.close()


def test_fingerprint_names_the_catalogue_not_its_order():
    assert fingerprint(None) == "all"
    assert fingerprint(frozenset({"a", "b"})) == fingerprint(frozenset({"b", "a"})) != fingerprint(frozenset({"a"}))
    assert fingerprint(frozenset({"a", "b"})).startswith("2:")


def test_a_newer_file_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "events.db"
    open_log(path, "NORMAL", None)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        open_log(path, "NORMAL", frozenset({"1"}))
    assert rows_of(path, "SELECT value FROM store_meta") == [("all",)]  # rolled back
