"""History reads on their own, over rows written straight into the file (standing for any writer, of this
process or another): the window in ``(ts, seq)`` order, known-item counts, the cache kept exact by catch-up,
its LRU bound, and the event loop's cheap read."""

from __future__ import annotations

import sqlite3

import pytest

from serving.event_history import HistoryReader, UserHistory, _History
from serving.event_schema import open_log

KNOWN = frozenset({"1", "2", "3"})


@pytest.fixture
def path(tmp_path):
    path = tmp_path / "events.db"
    open_log(path, "NORMAL", KNOWN)
    return path


def write(path, rows, unknown: bool = False) -> None:
    """Insert ``(user, item, ts)`` rows and count them, as the writer does."""
    with sqlite3.connect(path) as db:
        for user, item, ts in rows:
            db.execute("INSERT INTO events (event_id, user_id, item_id, ts) VALUES (hex(randomblob(8)),?,?,?)",
                       (user, item, ts))
            table = "user_items" if item in KNOWN else "user_unknown"
            db.execute(f"INSERT INTO {table} VALUES (?,?,1) ON CONFLICT DO UPDATE SET n = n + 1", (user, item))


def reader(path, cache_users: int = 10, catch_up_rows: int = 100, window: int | None = 3) -> HistoryReader:
    return HistoryReader(path, "NORMAL", window, KNOWN, cache_users, catch_up_rows, watermark=0)


def test_the_window_in_history_order_with_known_counts(path):
    write(path, [("u", "1", 1.0), ("u", "x", 3.0), ("u", "2", 2.0), ("u", "1", 4.0), ("v", "3", 1.0)])
    for cache_users in (10, 0):
        hist = reader(path, cache_users).user_history("u")
        assert hist == UserHistory(["2", "x", "1"], {"1": 2, "2": 1}) and hist.n_events == 3
    r = reader(path)
    assert r.user_history_uncached("u") == r.user_history("u")
    assert r.unknown_items("u") == 1 and r.unknown_items("v") == 0 and r.count() == 5


def test_the_cache_folds_in_later_rows_and_drops_itself_after_a_gap(path):
    r = reader(path, catch_up_rows=3)
    write(path, [("u", "1", 1.0), ("v", "2", 1.0)])
    assert r.user_history("u").items == ["1"] and r.user_history("v").items == ["2"]
    write(path, [("u", "2", 5.0), ("u", "3", 0.5)])  # the older timestamp sorts first
    assert r.user_history("u") == r.user_history_uncached("u") == UserHistory(["3", "1", "2"], {"1": 1, "2": 1, "3": 1})
    assert list(r._cache) == ["v", "u"]
    write(path, [("w", "1", 1.0)] * 4)  # more than catch_up_rows: reload whoever is asked
    assert r.user_history("v").items == ["2"] and list(r._cache) == ["v"]


def test_the_cache_holds_the_most_recent_users(path):
    r = reader(path, cache_users=2)
    write(path, [(u, "1", 1.0) for u in "abc"])
    for u in "abca":
        r.user_history(u)
    assert list(r._cache) == ["c", "a"]


def test_the_loops_read_only_when_cheap(path):
    r = reader(path)
    write(path, [("u", "1", 1.0)])
    assert r.user_history_now("u") is None  # not cached
    first = r.user_history("u")
    assert r.user_history_now("u") == first
    write(path, [("u", "2", 2.0), ("v", "2", 1.0)])
    assert r.user_history_now("u", max_fold=1) is None  # two rows to fold: in a thread
    assert r.user_history_now("u", max_fold=2).items == ["1", "2"]
    with r._cache_lock:
        assert r.user_history_now("u") is None
    assert r.connection() is r.connection()  # one per thread


def test_a_cached_history_inserts_by_ts_and_seq_and_keeps_the_window():
    hist = _History(window=3, known=frozenset({"a"}))
    for ts, seq, item in [(2.0, 1, "a"), (1.0, 2, "b"), (2.0, 3, "c"), (0.5, 4, "a")]:
        hist.add(ts, seq, item)
    assert hist.items == ["b", "a", "c"] and hist.counts == {"a": 2}
    copy = hist.copy()
    copy.items.append("z")
    assert hist.items == ["b", "a", "c"]
