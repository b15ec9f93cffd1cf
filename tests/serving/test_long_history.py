"""A user with 200k stored events: history reads are bounded (last max_seq_len items + item counts), the
ranking is the one of the last max_seq_len events, and an old event log gets its item counts on open."""

from __future__ import annotations

import random
import sqlite3

import httpx
import pytest

from serving.artifacts import load_artifacts
from serving.device_app import DeviceService, create_device_app
from serving.event_store import EventStore
from tests.serving.conftest import API_KEY, AUTH, LiveServer, serve_config

N_EVENTS = 200_000


def long_history(runtime, n: int = N_EVENTS) -> list[tuple[str, str, str, float]]:
    rng = random.Random(3)
    tok = runtime.item_tokens
    return [(f"heavy-{i}", "heavy", str(tok[rng.randrange(1, runtime.n_items)]), float(i)) for i in range(n)]


class VMSteps:
    """Counts SQLite virtual-machine steps on a connection (a scan of 200k index entries takes millions)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn, self.steps = conn, 0

    def __enter__(self):
        self.conn.set_progress_handler(self._tick, 1)
        return self

    def _tick(self) -> int:
        self.steps += 1
        return 0

    def __exit__(self, *exc):
        self.conn.set_progress_handler(None, 0)


@pytest.mark.parametrize("cache_users", [10, 0])
def test_store_reads_only_the_window(runtime, tmp_path, cache_users):
    window = runtime.model.max_seq_len
    rows = long_history(runtime)
    store = EventStore(tmp_path / "events.db", "NORMAL", history_cache_users=cache_users, window=window)
    try:
        store.append_future(rows).result(timeout=300)
        store.append_future([("light-0", "light", rows[0][2], 1.0)]).result(timeout=30)
        store.history("light")  # folds the bulk insert (the catch-up), not what is measured here
        conn = store.reader.connection()
        with VMSteps(conn) as vm:
            hist = store.user_history("heavy")
        assert hist.items == [r[2] for r in rows[-window:]]  # exactly the last max_seq_len, in order
        assert hist.n_events == N_EVENTS
        assert set(hist.counts) == {r[2] for r in rows}
        # the read touched about window + distinct-items rows; a full scan would be millions of steps
        assert vm.steps < 100_000, vm.steps
        with VMSteps(conn) as full:
            conn.execute("SELECT item_id FROM events WHERE user_id='heavy' ORDER BY ts, seq").fetchall()
        assert full.steps > 10 * vm.steps  # the measure tells the two apart
        # a new event (with an old timestamp: it sorts before the window) only changes the counts
        store.append_future([("late", "heavy", rows[5][2], 0.5)]).result(timeout=30)
        again = store.user_history("heavy")
        assert again.items == hist.items and again.n_events == N_EVENTS + 1
        store.append_future([("new", "heavy", rows[7][2], 1e9)]).result(timeout=30)
        assert store.history("heavy") == hist.items[1:] + [rows[7][2]] == store.history_uncached("heavy")
    finally:
        store.close()


def test_rank_for_a_200k_event_user_uses_the_last_window(checkpoint, runtime, tmp_path):
    cfg = serve_config(checkpoint, tmp_path)
    service = DeviceService(cfg, load_artifacts(cfg))  # no cloud, no bank: the base head
    rows = long_history(runtime)
    service.store.append_future(rows).result(timeout=300)
    t2i, window = runtime.token_to_id, runtime.model.max_seq_len
    last = [t2i[r[2]] for r in rows[-window:]]
    seen = {t2i[r[2]] for r in rows}
    with LiveServer(create_device_app(service, API_KEY)) as dev, httpx.Client(timeout=60, headers=AUTH) as c:
        for exclude_seen, exclude in ((True, seen), (False, set())):
            body = c.post(f"{dev.url}/v1/rank", json={"user_id": "heavy", "k": 10, "exclude_seen": exclude_seen})
            assert body.status_code == 200, body.text
            want, scores = runtime.rank(last, 10, exclude=exclude)
            got = body.json()
            assert [it["item_id"] for it in got["items"]] == [str(runtime.item_tokens[i]) for i in want]
            assert [it["score"] for it in got["items"]] == pytest.approx(scores, rel=1e-5)
            assert got["history_length"] == N_EVENTS and got["adaptation"] == "base"
        other = c.post(f"{dev.url}/v1/rank", json={"history": ["50"], "k": 3})  # everyone else unaffected
        assert other.status_code == 200 and other.json()["history_length"] == 1


def test_an_old_event_log_gets_item_counts(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the schema before user_items
        db.executescript("""
            CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
                                 user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts REAL NOT NULL);
            CREATE INDEX events_user ON events (user_id, ts, seq);
        """)
        db.executemany("INSERT INTO events (event_id, user_id, item_id, ts) VALUES (?,?,?,?)",
                       [(f"e{i}", f"u{i % 2}", str(i % 3), float(i)) for i in range(12)])
    for _ in range(2):  # opened twice: counted once
        store = EventStore(path, "NORMAL", window=4)
        try:
            hist = store.user_history("u0")
            assert hist.items == ["1", "0", "2", "1"] and hist.counts == {"0": 2, "1": 2, "2": 2}
        finally:
            store.close()
    store = EventStore(path, "NORMAL", window=4)
    try:
        assert store.append_future([("e12", "u0", "2", 99.0), ("e0", "u0", "0", 0.0)]).result().inserted == 1
        assert store.user_history_uncached("u0").counts == {"0": 2, "1": 2, "2": 3}
    finally:
        store.close()
