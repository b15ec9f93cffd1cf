"""The event log's per-user integrity and bounded work: event ids scoped per user, a re-sent id with another
payload is a conflict that rejects its whole request (and only it), unknown items capped per user (exactly,
across processes), an old file migrated in place, and reads bounded by the catalogue. Several EventStore
instances on one file stand for the worker processes that share it."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.event_schema import SCHEMA_V1, SCHEMA_VERSION
from serving.event_store import EventStore
from serving.event_writer import EventConflict, EventRejected, TooManyUnknownItems, WriteResult
from tests.serving.test_long_history import VMSteps

CATALOGUE = [str(i) for i in range(1, 51)]  # known item ids "1".."50"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "events.db"


@pytest.fixture
def stores():
    opened: list[EventStore] = []

    def open_store(path, **kw) -> EventStore:
        kw.setdefault("synchronous", "NORMAL")
        store = EventStore(path, **kw)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def append(store: EventStore, rows) -> WriteResult:
    return store.append_future(rows).result(timeout=30)


def db_rows(path, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, args).fetchall()


def counts(path, table: str = "user_items") -> dict[tuple[str, str], int]:
    return {(u, i): n for u, i, n in db_rows(path, f"SELECT user_id, item_id, n FROM {table}")}


# ---- per-user event ids and conflicts -----------------------------------------------------------


def test_the_same_event_id_from_two_users_stores_both(path, stores):
    a, b = stores(path), stores(path)
    assert append(a, [("V-6", "attacker", "1", 1.0)]) == WriteResult(1, 0)
    assert append(b, [("V-6", "victim", "2", 2.0)]) == WriteResult(1, 0)  # not a duplicate of the attacker's
    assert a.history("victim") == ["2"] and b.history("attacker") == ["1"]
    assert a.count() == 2


def test_an_exact_resend_is_a_duplicate(path, stores):
    store = stores(path)
    rows = [("e1", "u", "1", 1.0), ("e2", "u", "2", 2.0)]
    assert append(store, rows) == WriteResult(2, 0)
    assert append(store, rows) == WriteResult(0, 2)
    assert append(store, [("e3", "u", "3", 3.0), ("e3", "u", "3", 3.0), ("e1", "u", "1", 1.0)]) == WriteResult(1, 2)
    assert store.history("u") == ["1", "2", "3"] and store.user_history("u").n_events == 3
    assert counts(path) == {("u", "1"): 1, ("u", "2"): 1, ("u", "3"): 1}


def test_a_resent_id_with_another_payload_rejects_the_whole_request(path, stores):
    store = stores(path)
    append(store, [("e1", "u", "1", 1.0), ("e2", "u", "2", 2.0)])
    before = (store.count(), counts(path), store.history("u"))
    request = [
        ("e3", "u", "3", 3.0),  # new: must not be stored either
        ("e1", "u", "9", 1.0),  # another item
        ("e2", "u", "2", 2.0),  # an exact re-send is fine
        ("e2", "u", "2", 7.0),  # another timestamp
        ("e4", "u", "4", 4.0),
        ("e4", "u", "5", 4.0),  # twice in the request, with another item
    ]
    with pytest.raises(EventConflict) as err:
        append(store, request)
    assert err.value.indexes == [1, 3, 5] and err.value.event_ids == ["e1", "e2", "e4"]
    assert err.value.user_ids == ["u", "u", "u"]
    assert isinstance(err.value, EventRejected) and "row 1 (event_id 'e1')" in str(err.value)
    assert (store.count(), counts(path), store.history("u")) == before
    assert store.history_uncached("u") == before[2]
    # the same ids under another user are that user's own events
    assert append(store, [("e1", "other", "9", 1.0), ("e2", "other", "2", 7.0)]) == WriteResult(2, 0)


def test_one_conflicting_caller_does_not_affect_the_others_in_its_group_commit(path, stores):
    store = stores(path)
    append(store, [("e1", "u", "1", 1.0)])
    batches: list[int] = []
    commit = store.writer._commit

    def recording(conn, batch):
        batches.append(len(batch))
        commit(conn, batch)

    store.writer._commit = recording
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the writer blocks on its next transaction until this ends
    first = store.append_future([("warm", "w", "1", 1.0)])
    deadline = time.monotonic() + 10
    while not store.writer._queue.empty() and time.monotonic() < deadline:  # the writer holds `first`
        time.sleep(0.01)
    time.sleep(0.05)
    good = store.append_future([("g1", "a", "1", 1.0), ("g2", "a", "2", 2.0)])
    bad = store.append_future([("b1", "b", "3", 1.0), ("e1", "u", "2", 1.0)])  # e1 of u was item 1
    later = store.append_future([("l1", "c", "4", 1.0)])
    lock.execute("COMMIT")
    lock.close()
    assert first.result(timeout=30) == WriteResult(1, 0)
    assert good.result(timeout=30) == WriteResult(2, 0)
    assert later.result(timeout=30) == WriteResult(1, 0)
    with pytest.raises(EventConflict) as err:
        bad.result(timeout=30)
    assert err.value.indexes == [1] and err.value.event_ids == ["e1"]
    assert batches == [1, 3]  # the three callers shared one transaction
    assert store.history("a") == ["1", "2"] and store.history("c") == ["4"]
    assert store.history("b") == [] and store.history("u") == ["1"]
    assert counts(path) == {("u", "1"): 1, ("w", "1"): 1, ("a", "1"): 1, ("a", "2"): 1, ("c", "4"): 1}


def test_server_time_rows_are_compared_on_the_item_only(path, stores):
    store = stores(path)
    t0 = time.time()
    assert append(store, [("e1", "u", "5", None)]) == WriteResult(1, 0)
    ((ts,),) = db_rows(path, "SELECT ts FROM events WHERE event_id='e1'")
    assert t0 <= ts <= time.time()  # stamped by the store
    assert append(store, [("e1", "u", "5", None)]) == WriteResult(0, 1)
    with pytest.raises(EventConflict):
        append(store, [("e1", "u", "6", None)])  # another item
    with pytest.raises(EventConflict):
        append(store, [("e1", "u", "5", ts + 1)])  # an explicit timestamp is compared
    assert append(store, [("e1", "u", "5", ts)]) == WriteResult(0, 1)
    assert append(store, [("e2", "u", "6", 1.0), ("e2", "u", "6", None)]) == WriteResult(1, 1)
    assert store.history("u") == ["6", "5"]


# ---- migration ----------------------------------------------------------------------------------


def old_file(path, rows):
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V1)
        db.executemany("INSERT INTO events (event_id, user_id, item_id, ts) VALUES (?,?,?,?)", rows)


def test_an_old_schema_file_is_migrated_once_keeping_seq_and_counts(path, stores):
    rows = [(f"e{i}", f"u{i % 3}", str(1 + i % 5), float(i % 7)) for i in range(60)]
    old_file(path, rows)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM events WHERE event_id='e59'")  # its seq (60) must never be handed out again
        db.execute("UPDATE user_items SET n = n - 1 WHERE user_id='u2' AND item_id='5'")
    seqs = dict(db_rows(path, "SELECT event_id, seq FROM events"))
    before = counts(path)
    histories = {u: [r[2] for r in sorted(rows[:-1], key=lambda r: (r[3], int(r[0][1:]))) if r[1] == u]
                 for u in ("u0", "u1", "u2")}

    with ThreadPoolExecutor(4) as pool:  # workers opening the file at once: one migrates, the others wait
        opened = list(pool.map(lambda _: stores(path, window=None), range(4)))
    assert db_rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert dict(db_rows(path, "SELECT event_id, seq FROM events")) == seqs
    assert counts(path) == before and counts(path, "user_unknown") == {}
    assert db_rows(path, "SELECT name FROM sqlite_master WHERE type='trigger'") == []
    for u, items in histories.items():
        assert opened[0].history(u) == items == opened[1].history_uncached(u)

    # ids are now per user; the counts are kept by the store (once, not also by the old trigger)
    assert append(opened[2], [("e0", "u1", "1", 100.0), ("e3", "u1", "2", 101.0)]) == WriteResult(2, 0)
    assert append(opened[3], [("e0", "u0", "1", 0.0)]) == WriteResult(0, 1)
    with pytest.raises(EventConflict):
        append(opened[3], [("e0", "u0", "2", 0.0)])
    assert min(s for (s,) in db_rows(path, "SELECT seq FROM events WHERE ts >= 100")) == 61
    after = counts(path)
    assert after[("u1", "1")] == before[("u1", "1")] + 1 and after[("u1", "2")] == before[("u1", "2")] + 1
    assert opened[0].history("u1")[-2:] == ["1", "2"]

    again = stores(path)  # a later open migrates nothing
    assert counts(path) == after and again.count() == 61


def test_an_old_file_opened_with_a_catalogue_sorts_unknown_counts_out(path, stores):
    old_file(path, [("a", "u", "1", 1.0), ("b", "u", "zz", 2.0), ("c", "u", "zz", 3.0), ("d", "v", "2", 1.0)])
    store = stores(path, known=CATALOGUE, max_unknown=1)
    assert counts(path) == {("u", "1"): 1, ("v", "2"): 1}
    assert counts(path, "user_unknown") == {("u", "zz"): 2}
    hist = store.user_history("u")
    assert hist.items == ["1", "zz", "zz"] and hist.counts == {"1": 1} and hist.n_events == 1
    assert store.unknown_items("u") == 1
    with pytest.raises(TooManyUnknownItems):
        append(store, [("e", "u", "yy", 4.0)])


def test_reopening_with_another_catalogue_sorts_the_counts_again(path, stores):
    a = stores(path, known=["1", "2"])
    append(a, [("a", "u", "1", 1.0), ("b", "u", "3", 2.0), ("c", "u", "3", 3.0)])
    assert a.user_history("u").counts == {"1": 1}
    a.close()
    b = stores(path)  # no catalogue: every item counts
    assert b.user_history("u").counts == {"1": 1, "3": 2} and counts(path, "user_unknown") == {}
    b.close()
    c = stores(path, known=["3"])
    assert c.user_history("u").counts == {"3": 2} and counts(path, "user_unknown") == {("u", "1"): 1}


def test_a_file_from_a_newer_version_is_refused(path, stores):
    stores(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        EventStore(path)


# ---- unknown items ------------------------------------------------------------------------------


def test_unknown_items_are_capped_per_user_across_processes(path, stores):
    a = stores(path, known=CATALOGUE, max_unknown=3)
    b = stores(path, known=CATALOGUE, max_unknown=3)
    assert append(a, [("1", "u", "x1", 1.0), ("2", "u", "1", 2.0), ("3", "u", "x2", 3.0)]) == WriteResult(3, 0)
    assert append(b, [("4", "u", "x3", 4.0), ("5", "u", "x1", 5.0)]) == WriteResult(2, 0)  # exactly at the cap
    before = (a.count(), counts(path), counts(path, "user_unknown"))
    request = [("6", "u", "2", 6.0), ("7", "u", "x2", 7.0), ("8", "u", "x4", 8.0), ("9", "u", "x5", 9.0)]
    with pytest.raises(TooManyUnknownItems) as err:
        append(a, request)
    assert (err.value.user_id, err.value.index, err.value.cap, err.value.item_id) == ("u", 2, 3, "x4")
    assert "at most 3" in str(err.value) and isinstance(err.value, EventRejected)
    assert (a.count(), counts(path), counts(path, "user_unknown")) == before  # the known row 6 too
    with pytest.raises(TooManyUnknownItems):
        append(b, [("10", "u", "x9", 10.0)])  # the other worker counts the same
    # known items and the unknown ones already stored go on; other users have their own allowance
    assert append(b, [("11", "u", "x3", 11.0), ("12", "u", "3", 12.0)]) == WriteResult(2, 0)
    assert append(a, [(str(20 + i), "v", f"y{i}", float(i)) for i in range(3)]) == WriteResult(3, 0)
    with pytest.raises(TooManyUnknownItems) as err:  # four distinct in one request: the fourth goes past
        append(b, [("30", "w", "z1", 1.0), ("31", "w", "z2", 1.0), ("32", "w", "z1", 1.0), ("33", "w", "z3", 1.0),
                   ("34", "w", "z4", 1.0)])
    assert err.value.index == 4 and err.value.item_id == "z4"
    assert a.unknown_items("u") == 3 and b.unknown_items("v") == 3 and a.unknown_items("w") == 0


def test_a_cap_of_zero_and_no_catalogue(path, tmp_path, stores):
    strict = stores(path, known=CATALOGUE, max_unknown=0)
    with pytest.raises(TooManyUnknownItems) as err:
        append(strict, [("1", "u", "5", 1.0), ("2", "u", "nope", 2.0)])
    assert err.value.index == 1 and strict.count() == 0
    anything = stores(tmp_path / "other.db", max_unknown=0)  # no catalogue: every item is known
    assert append(anything, [("1", "u", "nope", 1.0)]) == WriteResult(1, 0)
    assert anything.user_history("u").counts == {"nope": 1}


def test_counts_hold_known_items_only_and_stay_exact_across_processes(path, stores):
    a = stores(path, known=CATALOGUE, window=4, history_cache_users=5)
    b = stores(path, known=CATALOGUE, window=4, history_cache_users=5)
    append(a, [("1", "u", "1", 1.0), ("2", "u", "zz", 2.0), ("3", "u", "1", 3.0)])
    hist = a.user_history("u")  # cached in a
    assert hist.items == ["1", "zz", "1"] and hist.counts == {"1": 2} and hist.n_events == 2
    append(b, [("4", "u", "yy", 4.0), ("5", "u", "2", 0.5), ("6", "u", "zz", 5.0)])  # folded in by a's catch-up
    for store in (a, b):
        cached, fresh = store.user_history("u"), store.user_history_uncached("u")
        assert cached == fresh
        assert cached.items == ["zz", "1", "yy", "zz"] and cached.counts == {"1": 2, "2": 1} and cached.n_events == 3


def test_the_cache_matches_sqlite_with_conflicts_and_unknown_items(path, stores):
    a = stores(path, known=CATALOGUE, max_unknown=4, window=6, history_cache_users=3)
    b = stores(path, known=CATALOGUE, max_unknown=4, window=6, history_cache_users=3)
    rng = random.Random(1)
    users = [f"u{i}" for i in range(5)]
    sent: list[tuple] = []
    rejected = 0
    for step in range(120):
        store = a if step % 3 else b
        rows = []
        for _ in range(rng.randrange(1, 5)):
            if sent and rng.random() < 0.15:
                e, u, i, t = rng.choice(sent)
                rows.append((e, u, i if rng.random() < 0.5 else str(rng.randrange(1, 51)), t))  # re-send
            else:
                item = str(rng.randrange(1, 51)) if rng.random() < 0.7 else f"x{rng.randrange(8)}"
                ts = None if rng.random() < 0.2 else float(rng.randrange(1, step + 2))
                rows.append((f"e{step}-{len(rows)}", rng.choice(users), item, ts))
        try:
            append(store, rows)
            sent.extend(r for r in rows if r[3] is not None)
        except EventRejected:
            rejected += 1
        for reader in (a, b):
            for u in rng.sample(users, 3):
                assert reader.user_history(u) == reader.user_history_uncached(u)
                assert not set(reader.user_history(u).counts) - set(CATALOGUE)
    assert rejected > 5
    for u in users:
        assert a.unknown_items(u) <= 4
        stored = db_rows(path, "SELECT item_id, COUNT(*) FROM events WHERE user_id=? GROUP BY item_id", u)
        assert a.user_history(u).counts == {i: n for i, n in stored if i in CATALOGUE}


@pytest.mark.parametrize("cache_users", [10, 0])
def test_a_user_with_many_unknown_items_reads_small(path, stores, cache_users):
    n = 50_000
    store = stores(path, known=CATALOGUE, window=20, history_cache_users=cache_users)  # no cap: the worst case
    rows = [(f"h{i}", "heavy", f"unknown-{i}" if i % 100 else CATALOGUE[i % 50], float(i)) for i in range(n)]
    assert append(store, rows) == WriteResult(n, 0)
    append(store, [("l0", "light", "1", 1.0)])
    store.history("light")  # the catch-up of the bulk insert is not what is measured
    conn = store.reader.connection()
    with VMSteps(conn) as vm:
        hist = store.user_history("heavy")
    assert hist.items == [r[2] for r in rows[-20:]]
    assert hist.counts == {"1": n // 100} and hist.n_events == n // 100  # known ones only
    assert vm.steps < 5_000, vm.steps  # window + catalogue rows, not the 49.5k unknown items
    with VMSteps(conn) as full:
        conn.execute("SELECT item_id, n FROM user_unknown WHERE user_id='heavy'").fetchall()
    assert full.steps > 20 * vm.steps


def test_concurrent_writers_on_one_file_keep_the_cap(path, stores):
    opened = [stores(path, known=CATALOGUE, max_unknown=5) for _ in range(3)]
    results: list[object] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        for j in range(6):
            try:
                res: object = append(opened[k], [(f"w{k}-{j}", "u", f"x{k}-{j}", float(j))])
            except TooManyUnknownItems as exc:
                res = exc
            with lock:
                results.append(res)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, WriteResult) for r in results) == 5
    assert opened[0].unknown_items("u") == 5 and opened[1].count() == 5


def test_a_cached_user_with_little_new_is_read_on_the_callers_thread(path, stores):
    """``user_history_now``: the same answer as ``user_history`` when cheap; None (read it in a thread) for a user not
    cached, more than ``max_fold`` new rows to fold in, or another reader at work."""
    a, b = stores(path), stores(path)  # b stands for another worker writing to the same file
    a.append_future([(f"e{i}", "ann", str(i % 50 + 1), float(i)) for i in range(5)]).result(timeout=30)
    assert a.user_history_now("ann") is None  # not cached yet
    first = a.user_history("ann")
    assert a.user_history_now("ann") == first
    b.append_future([("late", "ann", "7", 100.0)]).result(timeout=30)
    now = a.user_history_now("ann")
    assert now == a.user_history_uncached("ann") and now.items[-1] == "7" and now.n_events == 6
    b.append_future([(f"x{i}", "bob", "3", float(i)) for i in range(10)]).result(timeout=30)
    assert a.user_history_now("ann", max_fold=5) is None  # 10 rows to fold: in a thread
    assert a.user_history_now("ann", max_fold=64) == a.user_history_uncached("ann")
    with a.reader._cache_lock:  # another reader at work: never wait for it on an event loop
        assert a.user_history_now("ann") is None
