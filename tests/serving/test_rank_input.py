"""A rank request as the model's input: stored events then the request's history, the window both as ids and as
the tokens that came (nothing mapped back), exclusions of seen items beyond the window, unknown ids listed."""

from __future__ import annotations

import asyncio

from serving.event_store import EventStore
from serving.rank_input import read_rank_input
from serving.schemas import RankRequest


def test_the_window_is_read_once_as_ids_and_as_its_tokens(runtime, tmp_path):
    t2i = runtime.token_to_id
    tokens = [str(t) for t in runtime.item_tokens[1:12]]
    store = EventStore(tmp_path / "events.db", "NORMAL", window=6, known=t2i.keys())
    try:
        rows = [(f"e{i}", "ann", t, float(i)) for i, t in enumerate(["not-an-item", *tokens[:8]])]
        store.append_future(rows).result(timeout=30)
        req = RankRequest(user_id="ann", history=[tokens[8], "nope", tokens[9]], k=5, exclude=[tokens[10], "zzz"])
        inp = asyncio.run(read_rank_input(req, store, t2i, width=4))
        assert inp.tokens == [tokens[6], tokens[7], tokens[8], tokens[9]]  # the last 4 known, stored ones first
        assert inp.window == [t2i[t] for t in inp.tokens]
        assert inp.n_events == 8 + 2  # the known events: stored, then sent
        # seen items are excluded whether in the window or not (the store keeps counts beyond its window)
        assert inp.exclude == {t2i[t] for t in tokens[:11]}
        assert inp.unknown == ["nope", "zzz"]  # the store's window of 6 no longer holds "not-an-item"
        assert (inp.user_id, inp.k) == ("ann", 5)

        keep_seen = asyncio.run(read_rank_input(RankRequest(history=[tokens[0]], exclude_seen=False), store, t2i, 4))
        assert keep_seen.exclude == set() and keep_seen.n_events == 1 and keep_seen.user_id is None
    finally:
        store.close()
