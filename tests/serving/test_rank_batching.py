"""Micro-batched ranking: batched answers equal batch-1 answers, a lone request never waits for a batch, no
request is lost or mixed up under concurrency (real HTTP on 127.0.0.1), and the event store's history cache
stays exact. No assertion depends on wall-clock time: the batcher records why and how big each batch was."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import httpx
import pytest
import torch

from recsys import ood
from recsys.runtime import DeviceRuntime
from serving.artifacts import load_artifacts
from serving.device_app import DeviceService, create_device_app
from serving.engine import TorchEngine
from serving.event_store import EventStore
from serving.rank_batcher import RankBatcher
from tests.serving.conftest import API_KEY, AUTH, LiveServer, RandomEditor, random_edit, serve_config, wait_for

TOL = 1e-4


def assert_same_ranking(got_items, got_scores, want_items, want_scores) -> None:
    """Same items in the same order, scores to float tolerance; batched float sums may only swap a tie."""
    assert len(got_items) == len(want_items)
    assert got_scores == pytest.approx(want_scores, abs=TOL, rel=TOL)
    for pos, (g, w) in enumerate(zip(got_items, want_items)):
        if g != w:  # a swap of two items whose scores agree to TOL, or a tie at the cut-off
            last = pos == len(want_items) - 1
            assert last or (w in got_items and abs(got_scores[got_items.index(w)] - want_scores[pos]) <= TOL), (
                got_items, want_items)


@pytest.fixture(scope="module")
def banked(runtime) -> DeviceRuntime:
    """The test runtime with a bank of 3 random prototypes (their edits: shared objects across requests)."""
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    rt = DeviceRuntime(runtime.model, runtime.item_tokens)
    rt.set_prototypes(RandomEditor(dim, n_layers, version="batch-v1").snapshot())
    return rt


@dataclass
class Job:
    window: list[int]
    k: int
    exclude: set[int]
    edit: object


def mixed_jobs(rt: DeviceRuntime, n: int = 24, seed: int = 0) -> list[Job]:
    """``n`` jobs mixing empty/short/over-long windows, exclusions, k, and edits: none, shared, per-request."""
    rng = random.Random(seed)
    dim, n_layers = rt.model.head.dim, len(rt.model.head.layers)
    jobs = []
    for i in range(n):
        length = rng.choice([0, 1, 3, 20, rt.model.max_seq_len + 15])
        window = [rng.randrange(1, rt.n_items) for _ in range(length)]
        exclude = set(rng.sample(window, min(len(window), 5))) | {rng.randrange(1, rt.n_items) for _ in range(i % 3)}
        k = rng.choice([1, 5, 10, 50, rt.n_items - 1])
        kind = i % 4
        if kind == 0:
            edit = None
        elif kind == 1:
            edit = rt.prototype_edit(i % 3)  # the same object for every request of this prototype
        else:
            edit = random_edit(f"job{i}", dim, n_layers, "v").head_edit()  # this request's own edit
        jobs.append(Job(window, k, exclude, edit))
    return jobs


async def through_both_steps(batcher: RankBatcher, job: Job, ticket=None):
    row = await batcher.encode(job.window, ticket=ticket)
    return row, await batcher.score(row.state, job.edit, job.k, job.exclude)


def check_against_batch_one(rt, jobs, results) -> None:
    for job, (row, (items, scores)) in zip(jobs, results):
        assert torch.allclose(row.state, rt.user_state(job.window), atol=TOL)
        assert row.prototype == rt.assign(rt.user_state(job.window))[0]
        want_items, want_scores = rt.rank(job.window, job.k, job.exclude, job.edit)
        assert_same_ranking(items, scores, want_items, want_scores)
        assert not set(items) & job.exclude


def run_together(batcher: RankBatcher, jobs: list[Job]):
    """Every job admitted first (as the HTTP middleware does), then each through both steps concurrently."""

    async def go():
        tickets = [batcher.admit() for _ in jobs]
        return await asyncio.gather(*(through_both_steps(batcher, j, t) for j, t in zip(jobs, tickets)))

    return asyncio.run(go())


def test_a_batch_ranks_like_batch_one(banked):
    torch.set_num_threads(1)
    jobs = mixed_jobs(banked)
    engine = TorchEngine(banked)
    rows = engine.encode([j.window for j in jobs])
    ranked = engine.rank([r.state for r in rows], [j.edit for j in jobs], [j.k for j in jobs],
                         [j.exclude for j in jobs])  # fmt: skip
    check_against_batch_one(banked, jobs, list(zip(rows, ranked)))

    # the same through the queues: all admitted first, so they form one batch in each step
    batcher = RankBatcher(engine, max_batch=64, wait_ms=3_600_000)  # only "idle" can run it
    check_against_batch_one(banked, jobs, run_together(batcher, jobs))
    assert [(r.size, r.reason) for r in batcher.stats.recent] == [(len(jobs), "idle")]
    assert [(r.size, r.reason) for r in batcher.scorer.stats.recent] == [(len(jobs), "idle")]


def test_rows_the_banks_ood_score_flags_get_no_prototype(runtime, banked):
    """The snapshot's OOD score (recsys.ood) decides per row: flagged devices are offered no prototype."""
    snap = banked.prototypes.model_copy(deep=True)
    rt = DeviceRuntime(runtime.model, runtime.item_tokens)  # its own copy: the fixture is shared
    rt.set_prototypes(snap)
    jobs = mixed_jobs(rt, n=16, seed=2)
    states = rt.user_states([j.window for j in jobs])
    protos, _ = rt.assign_batch(states)
    with torch.inference_mode():
        ent = ood.entropy(rt.model.logits(rt.model.head(states, None)))
    snap.ood = ood.OodScore(w_entropy=1.0, w_proto=0.0, bias=0.0, proto_logodds=[0.0] * snap.size,
                            threshold=float(ent.median()))  # about half the rows above it
    rt.set_prototypes(snap)
    rows = TorchEngine(rt).encode([j.window for j in jobs])
    flagged = (ent > float(ent.median())).tolist()
    assert any(flagged) and not all(flagged) and flagged == rt.ood_flags(states, protos)
    assert [r.prototype for r in rows] == [None if f else p for f, p in zip(flagged, protos)]


def test_a_row_whose_edit_comes_later_is_scored_in_a_later_batch(banked):
    """A request that waits between the steps (e.g. for its cloud edit) does not hold the others' scoring."""
    jobs = mixed_jobs(banked, n=6, seed=1)
    batcher = RankBatcher(TorchEngine(banked), max_batch=64, wait_ms=3_600_000)
    late = asyncio.Event()

    async def waits_for_its_edit(job, ticket):
        row = await batcher.encode(job.window, ticket=ticket)
        await late.wait()
        return row, await batcher.score(row.state, job.edit, job.k, job.exclude)

    async def go():
        tickets = [batcher.admit() for _ in jobs]
        slow = asyncio.ensure_future(waits_for_its_edit(jobs[3], tickets[3]))
        others = [through_both_steps(batcher, j, t) for i, (j, t) in enumerate(zip(jobs, tickets)) if i != 3]
        done = await asyncio.gather(*others)
        late.set()
        return done[:3] + [await slow] + done[3:]

    results = asyncio.run(go())
    check_against_batch_one(banked, jobs, results)
    assert [(r.size, r.reason) for r in batcher.stats.recent] == [(6, "idle")]  # one encoder pass
    assert [r.size for r in batcher.scorer.stats.recent] == [5, 1]  # the late row scored on its own, after


def test_a_lone_request_does_not_wait_for_a_batch(banked):
    jobs = mixed_jobs(banked, n=3)
    batcher = RankBatcher(TorchEngine(banked), max_batch=64, wait_ms=3_600_000)  # an hour: waiting would hang

    async def go():
        await through_both_steps(batcher, jobs[0])  # nothing admitted: runs at once
        ticket = batcher.admit()
        await through_both_steps(batcher, jobs[1], ticket)  # the only admitted request: runs at once
        batcher.release(ticket)
        assert batcher.expected == 0

    asyncio.run(go())
    assert [(r.size, r.reason) for r in batcher.stats.recent] == [(1, "idle"), (1, "idle")]
    assert [(r.size, r.reason) for r in batcher.scorer.stats.recent] == [(1, "idle"), (1, "idle")]


def test_the_wait_for_requests_on_their_way_is_bounded(banked):
    jobs = mixed_jobs(banked, n=4)
    engine = TorchEngine(banked)
    bounded = RankBatcher(engine, max_batch=64, wait_ms=5)

    async def stuck_client():
        stuck = bounded.admit()  # admitted but never queued (e.g. a client that stops sending its body)
        await through_both_steps(bounded, jobs[0], bounded.admit())  # answered after the bound, without it
        bounded.release(stuck)

    asyncio.run(stuck_client())
    assert [(r.size, r.reason) for r in bounded.stats.recent] == [(1, "timeout")] and bounded.expected == 0

    batcher = RankBatcher(engine, max_batch=64, wait_ms=3_600_000)

    async def failed_request():
        a, b, c = batcher.admit(), batcher.admit(), batcher.admit()
        first = asyncio.ensure_future(through_both_steps(batcher, jobs[1], a))
        second = asyncio.ensure_future(through_both_steps(batcher, jobs[2], b))
        await asyncio.sleep(0)
        assert batcher.queued == 2 and batcher.expected == 1
        batcher.release(c)  # c ends without ranking (e.g. a 422): nobody is on the way any more → run now
        await asyncio.gather(first, second)

    asyncio.run(failed_request())
    assert [(r.size, r.reason) for r in batcher.stats.recent] == [(2, "idle")] and batcher.expected == 0


def test_max_batch_caps_a_batch_and_one_means_batch_one(banked):
    jobs = mixed_jobs(banked, n=10, seed=2)
    engine = TorchEngine(banked)
    capped = RankBatcher(engine, max_batch=4, wait_ms=3_600_000)
    check_against_batch_one(banked, jobs, run_together(capped, jobs))
    assert [(r.size, r.reason) for r in capped.stats.recent] == [(4, "full"), (4, "full"), (2, "idle")]
    single = RankBatcher(engine, max_batch=1, wait_ms=3_600_000)
    check_against_batch_one(banked, jobs, run_together(single, jobs))
    assert [r.size for r in single.stats.recent] == [1] * len(jobs) and single.stats.mean_size == 1
    assert [r.size for r in single.scorer.stats.recent] == [1] * len(jobs)


# ---- over HTTP ----------------------------------------------------------------------------------


@pytest.fixture()
def device(checkpoint, runtime, tmp_path):
    """A device service (no cloud) with a cached 3-prototype bank, 40 users with stored events."""
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    RandomEditor(dim, n_layers, version="batch-v1").snapshot().save(tmp_path / "prototypes.json")
    cfg = serve_config(checkpoint, tmp_path, "serve.device.batch_wait_ms=2")
    service = DeviceService(cfg, load_artifacts(cfg))
    rng = random.Random(7)
    users = {f"user{u}": [rng.randrange(1, runtime.n_items) for _ in range(rng.randrange(1, 80))] for u in range(40)}
    tok = runtime.item_tokens
    with LiveServer(create_device_app(service, API_KEY)) as srv, httpx.Client(timeout=60, headers=AUTH) as c:
        for u, ids in users.items():
            events = [{"event_id": f"{u}-{i}", "user_id": u, "item_id": str(tok[j])} for i, j in enumerate(ids)]
            assert c.post(f"{srv.url}/v1/events", json={"events": events}).status_code == 200
        yield srv, service, users


def request_mix(runtime, users, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    tok, names = runtime.item_tokens, sorted(users)
    bodies = []
    for i in range(n):
        body = {"k": rng.choice([1, 3, 10, 25])}
        if i % 3 != 2:
            body["user_id"] = names[i % len(names)]
        if i % 3 != 0:
            body["history"] = [str(tok[rng.randrange(1, runtime.n_items)]) for _ in range(rng.randrange(0, 8))]
        if i % 4 == 0:
            body["exclude"] = [str(tok[rng.randrange(1, runtime.n_items)]) for _ in range(3)]
        if i % 5 == 0:
            body["exclude_seen"] = False
        bodies.append(body)
    return bodies


def expected_answer(rt: DeviceRuntime, users, body: dict):
    """What batch-1 ``DeviceRuntime.rank`` gives for ``body`` (base head or the assigned prototype's edit)."""
    t2i = rt.token_to_id
    ids = list(users.get(body.get("user_id"), [])) + [t2i[t] for t in body.get("history", []) if t in t2i]
    exclude = {t2i[t] for t in body.get("exclude", []) if t in t2i}
    if body.get("exclude_seen", True):
        exclude |= set(ids)
    proto, _ = rt.assign(rt.user_state(ids))
    items, scores = rt.rank(ids, body["k"], exclude, rt.prototype_edit(proto))
    return [str(rt.item_tokens[i]) for i in items], scores, proto, len(ids)


def check_response(rt, users, body, resp) -> None:
    assert resp.status_code == 200, resp.text
    got = resp.json()
    items, scores, proto, n = expected_answer(rt, users, body)
    assert got["adaptation"] == "prototype-cache" and got["prototype_id"] == proto and got["history_length"] == n
    assert_same_ranking([it["item_id"] for it in got["items"]], [it["score"] for it in got["items"]], items, scores)


def test_http_concurrent_requests_are_all_answered_for_the_right_user(device, banked):
    srv, service, users = device
    bodies = request_mix(banked, users, 200)
    answers: dict[int, httpx.Response] = {}

    async def client(worker: int, queue: asyncio.Queue) -> None:
        async with httpx.AsyncClient(timeout=60, headers=AUTH) as c:
            while not queue.empty():
                i = queue.get_nowait()
                answers[i] = await c.post(f"{srv.url}/v1/rank", json=bodies[i])

    async def go():
        queue = asyncio.Queue()
        for i in range(len(bodies)):
            queue.put_nowait(i)
        await asyncio.gather(*(client(w, queue) for w in range(16)))

    before = service.batcher.stats.requests, service.batcher.scorer.stats.requests
    asyncio.run(go())
    assert sorted(answers) == list(range(len(bodies)))
    for i, body in enumerate(bodies):
        check_response(banked, users, body, answers[i])
    after = service.batcher.stats.requests, service.batcher.scorer.stats.requests
    assert [a - b for a, b in zip(after, before)] == [len(bodies)] * 2  # each request encoded and scored once
    assert service.batcher.expected == 0


def test_http_requests_that_arrive_together_are_scored_in_one_batch(device, banked):
    srv, service, users = device
    bodies = request_mix(banked, users, 6, seed=3)
    batcher, loop = service.batcher, service.loop
    batcher.wait_s = 3600.0  # only "idle" (or "full") can run a batch here
    held = []
    loop.call_soon_threadsafe(lambda: held.append(batcher.admit()))  # one more request "on its way"
    wait_for(lambda: held)
    n_before = len(batcher.stats.recent)
    answers: list[httpx.Response] = []

    async def go():
        async with httpx.AsyncClient(timeout=60, headers=AUTH) as c:
            tasks = [asyncio.ensure_future(c.post(f"{srv.url}/v1/rank", json=b)) for b in bodies]
            await asyncio.to_thread(wait_for, lambda: batcher.queued == len(bodies), 60)
            assert batcher.expected == 1  # the queued requests gave their admission back
            loop.call_soon_threadsafe(batcher.release, held[0])  # the held one ends: run the batch now
            answers.extend(await asyncio.gather(*tasks))

    asyncio.run(go())
    assert [(r.size, r.reason) for r in list(batcher.stats.recent)[n_before:]] == [(len(bodies), "idle")]
    for body, resp in zip(bodies, answers):
        check_response(banked, users, body, resp)


def test_http_lone_request_answered_at_once(device, banked):
    srv, service, users = device
    service.batcher.wait_s = 3600.0  # a request that waited for company would hang the test
    body = {"user_id": "user3", "k": 10}
    with httpx.Client(timeout=60, headers=AUTH) as c:
        resp = c.post(f"{srv.url}/v1/rank", json=body)
        bad = c.post(f"{srv.url}/v1/rank", json={"user_id": "user3", "k": 0})  # a 422 gives its admission back
    check_response(banked, users, body, resp)
    assert bad.status_code == 422
    assert service.batcher.stats.recent[-1].size == 1 and service.batcher.stats.recent[-1].reason == "idle"
    assert service.batcher.expected == 0


# ---- history cache ------------------------------------------------------------------------------


def test_history_cache_matches_sqlite_across_writers(tmp_path):
    path = tmp_path / "events.db"
    a = EventStore(path, "NORMAL", history_cache_users=3)
    b = EventStore(path, "NORMAL", history_cache_users=3)  # another worker on the same file
    try:
        rng = random.Random(0)
        users = [f"u{i}" for i in range(6)]
        n = 0
        for step in range(40):
            store = a if step % 3 else b
            rows = []
            for _ in range(rng.randrange(1, 6)):
                n += 1
                ts = float(rng.choice([n, n, n, rng.randrange(1, n + 1)]))  # some arrive with older timestamps
                rows.append((f"e{n}", rng.choice(users), str(rng.randrange(1, 50)), ts))
            if step % 7 == 0:
                rows.append(rows[0])  # a re-sent event id is a no-op
            store.append_future(rows).result(timeout=30)
            for reader in (a, b):
                for u in rng.sample(users, 4):
                    assert reader.history(u) == reader.history_uncached(u)
        h = a.history("u0")
        h.append("mutated")  # callers get their own list
        assert a.history("u0") == a.history_uncached("u0")
    finally:
        a.close()
        b.close()
