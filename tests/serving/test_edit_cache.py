"""The device's edit cache: when a cached or asked edit is current, a late answer never replaces a newer one, the
maps stay bounded (least recently used out first), one policy decision per new event, requests in flight joined
only for what they were asked."""

from __future__ import annotations

import asyncio

from serving.edit_cache import CachedEdit, EditCache
from serving.engine import Received


def edit(n_events: int, prototype: int | None = 1, bank: str | None = "v1") -> CachedEdit:
    return CachedEdit(Received(bank or "-", prototype, f"edit@{n_events}"), n_events, prototype, bank)


def test_refresh_keeps_an_edit_for_refresh_every_events_of_the_same_prototype_and_bank():
    cache = EditCache(size=10, refresh_every=3)
    c = edit(4)
    assert [cache.current(c, n, 1, "v1") for n in (3, 4, 5, 6, 7)] == [False, True, True, True, False]
    assert not cache.current(c, 4, 2, "v1") and not cache.current(c, 4, 1, "v2") and not cache.current(None, 4, 1, "v1")


def test_the_other_policies_decide_again_at_every_new_event():
    cache = EditCache(size=10, refresh_every=None)
    assert [cache.current(edit(4), n, 1, "v1") for n in (3, 4, 5)] == [False, True, False]
    assert cache.first_decision("u:a", 4) and not cache.first_decision("u:a", 4)  # decided once for 4 events
    assert cache.first_decision("u:a", 5) and cache.first_decision("u:b", 5)


def test_a_late_answer_never_replaces_a_newer_one_and_the_cache_is_bounded():
    cache = EditCache(size=2, refresh_every=2)
    cache.put("u:a", edit(6))
    cache.put("u:a", edit(4))  # the answer to an older request lands last
    assert cache.get("u:a").n_events == 6
    cache.put("u:a", edit(8))
    assert cache.get("u:a").n_events == 8
    cache.put("u:b", edit(1))
    cache.get("u:a")  # a is now the most recently used
    cache.put("u:c", edit(1))
    assert set(cache.edits) == {"u:a", "u:c"}
    for n in range(5):
        cache.first_decision(f"u:{n}", 1)
    assert list(cache.decided) == ["u:3", "u:4"]


def test_a_request_in_flight_is_joined_only_for_the_history_it_was_asked_for():
    cache = EditCache(size=10, refresh_every=2)

    async def go():
        request = asyncio.get_running_loop().create_future()
        cache.track("u:a", request, edit(4))
        assert cache.joinable("u:a", 5, 1, "v1") is request  # within refresh_every of what it asked
        assert cache.joinable("u:a", 6, 1, "v1") is None  # a newer history: ask again
        assert cache.joinable("u:a", 4, 2, "v1") is None and cache.joinable("u:b", 4, 1, "v1") is None
        other = asyncio.get_running_loop().create_future()
        cache.untrack("u:a", other)  # only its own request untracks a key
        assert cache.joinable("u:a", 4, 1, "v1") is request
        cache.cancel_all()
        assert request.cancelled()
        cache.untrack("u:a", request)
        assert cache.inflight == {}

    asyncio.run(go())
