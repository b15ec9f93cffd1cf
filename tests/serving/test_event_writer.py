"""The writer thread on its own: a future resolves after its rows' commit, each request is all or nothing,
the per-user counts and the unknown-items cap are kept in the same transaction, close commits what is queued."""

from __future__ import annotations

import sqlite3
import time

import pytest

from serving.event_schema import open_log
from serving.event_writer import EventConflict, EventWriter, TooManyUnknownItems, WriteResult


@pytest.fixture
def path(tmp_path):
    path = tmp_path / "events.db"
    open_log(path, "NORMAL", frozenset({"1", "2"}))
    return path


@pytest.fixture
def writer(path):
    writer = EventWriter(path, "NORMAL", max_batch=100, known=frozenset({"1", "2"}), max_unknown=2)
    yield writer
    writer.close()


def rows_of(path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def test_an_acknowledged_request_is_committed(path, writer):
    t0 = time.time()
    assert writer.append_future([("e1", "u", "1", 5.0), ("e2", "u", "x", None)]).result(timeout=30) == WriteResult(2, 0)
    stored = rows_of(path, "SELECT event_id, item_id, ts FROM events ORDER BY seq")  # another connection sees it
    assert stored[0] == ("e1", "1", 5.0) and stored[1][:2] == ("e2", "x") and t0 <= stored[1][2] <= time.time()
    assert rows_of(path, "SELECT * FROM user_items") == [("u", "1", 1)]
    assert rows_of(path, "SELECT * FROM user_unknown") == [("u", "x", 1)]
    assert writer.append_future([("e1", "u", "1", 5.0)]).result(timeout=30) == WriteResult(0, 1)


def test_a_rejected_request_stores_nothing_and_the_next_one_goes_on(path, writer):
    writer.append_future([("e1", "u", "1", 1.0)]).result(timeout=30)
    with pytest.raises(EventConflict) as err:
        writer.append_future([("e2", "u", "2", 2.0), ("e1", "u", "2", 1.0)]).result(timeout=30)
    assert err.value.indexes == [1]
    with pytest.raises(TooManyUnknownItems) as cap:
        writer.append_future([("e3", "u", "x", 3.0), ("e4", "u", "y", 4.0), ("e5", "u", "z", 5.0)]).result(timeout=30)
    assert (cap.value.index, cap.value.cap) == (2, 2)
    assert rows_of(path, "SELECT event_id FROM events") == [("e1",)]
    assert rows_of(path, "SELECT * FROM user_unknown") == []
    assert writer.append_future([("e6", "u", "2", 6.0)]).result(timeout=30) == WriteResult(1, 0)


def test_close_commits_what_is_queued_in_order(path):
    writer = EventWriter(path, "NORMAL", max_batch=7, known=None, max_unknown=None)
    futures = [writer.append_future([(f"e{i}-{j}", "u", str(i), float(i)) for j in range(3)]) for i in range(20)]
    writer.close()
    assert all(f.done() for f in futures) and [f.result() for f in futures] == [WriteResult(3, 0)] * 20
    assert [e for (e,) in rows_of(path, "SELECT event_id FROM events ORDER BY seq")] == [
        f"e{i}-{j}" for i in range(20) for j in range(3)]
    assert rows_of(path, "SELECT SUM(n) FROM user_items") == [(60,)]  # no catalogue: every item counted
