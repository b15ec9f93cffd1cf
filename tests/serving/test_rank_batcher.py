"""serving.rank_batcher: concurrent requests of one worker share an encoder pass and a scoring pass, batches close
when full, idle or timed out, and a failed batch reaches every waiter (a tiny real torch engine)."""

from __future__ import annotations

import asyncio

import pytest

from recsys.runtime import DeviceRuntime
from serving.engine import TorchEngine
from serving.rank_batcher import RankBatcher
from tests.serving.tiny_run import tiny_checkpoint, tiny_config

WINDOWS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


@pytest.fixture(scope="module")
def engine(tmp_path_factory, workdir) -> TorchEngine:
    cfg = tiny_config(tmp_path_factory.mktemp("rank-batcher"), workdir)
    return TorchEngine(DeviceRuntime.load(tiny_checkpoint(cfg)))


async def _rank_all(batcher: RankBatcher, windows, k: int = 5):
    async def one(window):
        row = await batcher.encode(window)
        return await batcher.score(row.state, None, k, set(window))

    return await asyncio.gather(*(one(w) for w in windows))


def test_requests_that_arrive_together_are_encoded_and_scored_together_as_alone(engine):
    batcher = RankBatcher(engine, max_batch=64, wait_ms=50)
    got = asyncio.run(_rank_all(batcher, WINDOWS))
    assert batcher.stats.batches == 1 and batcher.stats.reasons == {"idle": 1} and batcher.scorer.stats.batches == 1
    for window, (ids, scores) in zip(WINDOWS, got):
        (row,) = engine.encode([window])
        ((want_ids, want_scores),) = engine.rank([row.state], [None], [5], [set(window)])
        assert ids == want_ids and not set(ids) & set(window) and len(ids) == 5
        assert scores == pytest.approx(want_scores, abs=1e-5)


def test_max_batch_caps_each_batch(engine):
    batcher = RankBatcher(engine, max_batch=2, wait_ms=50)
    asyncio.run(_rank_all(batcher, WINDOWS))
    assert sorted(batcher.stats.sizes.elements()) == [1, 2, 2] and batcher.stats.reasons["full"] == 2
    assert batcher.stats.mean_size == pytest.approx(5 / 3)


def test_an_admitted_request_on_its_way_is_waited_for_but_not_past_the_bound(engine):
    batcher = RankBatcher(engine, max_batch=64, wait_ms=30)

    async def main():
        ticket = batcher.admit()  # its headers are in, its body is not: the batch waits for it ...
        assert batcher.expected == 1
        results = await _rank_all(batcher, WINDOWS[:2])
        batcher.release(ticket)  # ... at most wait_ms; it never came
        return results

    asyncio.run(main())
    assert batcher.stats.reasons == {"timeout": 1} and batcher.stats.recent[-1].max_wait_s >= 0.025
    assert batcher.expected == 0


def test_a_released_ticket_lets_the_queued_requests_go_at_once(engine):
    batcher = RankBatcher(engine, max_batch=64, wait_ms=5000)

    async def main():
        ticket = batcher.admit()
        task = asyncio.ensure_future(batcher.encode([1, 2]))
        await asyncio.sleep(0.01)
        assert not task.done() and batcher.queued == 1
        batcher.release(ticket)  # the client went away before its body arrived
        return await asyncio.wait_for(task, 1.0)

    asyncio.run(main())
    assert batcher.stats.reasons == {"idle": 1}


class Failing(RankBatcher):
    """A fault injected: the engine's encoder raises."""

    def _encode(self, windows):
        raise RuntimeError("encoder down")


def test_a_failed_batch_reaches_every_waiter(engine):
    batcher = Failing(engine, max_batch=64, wait_ms=10)

    async def main():
        return await asyncio.gather(*(batcher.encode(w) for w in WINDOWS[:3]), return_exceptions=True)

    errors = asyncio.run(main())
    assert [str(e) for e in errors] == ["encoder down"] * 3 and batcher.stats.batches == 1
