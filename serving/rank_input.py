"""A rank request as the model's input: the user's stored events and the request's own history, read once.

Item tokens become ids here and only here: the window the model reads (the last ``max_seq_len`` known items) is
kept both ways, ids for the model and the tokens as they came for the cloud (``POST /v1/edits`` takes tokens), so
nothing is mapped back. Unknown items are skipped (and listed, at most ``MAX_UNKNOWN_LISTED``); seen items, the
stored ones beyond the window included, are excluded unless the request says not to.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from serving.event_history import UserHistory
from serving.event_store import EventStore
from serving.schemas import MAX_UNKNOWN_LISTED, RankRequest


@dataclass(frozen=True)
class RankInput:
    user_id: str | None
    k: int
    window: list[int]  # item ids the model reads, oldest first
    tokens: list[str]  # the same items as tokens (what the cloud is asked with)
    exclude: set[int]  # item ids never returned
    n_events: int  # the user's known events (stored + sent): the history length the edit cache keys on
    unknown: list[str]  # item ids of the request and the window outside the catalogue


async def read_rank_input(req: RankRequest, store: EventStore, token_to_id: dict[str, int], width: int) -> RankInput:
    """``req`` and the user's stored events (:meth:`EventStore.user_history_now`, else read in a thread) as the
    model's input."""
    stored = UserHistory()
    if req.user_id is not None:  # a cached user on this thread, else a bounded read in a thread (SQLite)
        stored = store.user_history_now(req.user_id) or await asyncio.to_thread(store.user_history, req.user_id)
    t2i, extra = token_to_id, req.history or []
    known = [t for t in (*stored.items, *extra) if t in t2i]
    tokens = known[-width:]
    exclude = {t2i[t] for t in req.exclude if t in t2i}
    if req.exclude_seen:  # every stored item, not only those in the window
        exclude.update(t2i[t] for t in known)
        exclude.update(t2i[t] for t in stored.counts if t in t2i)
    # what this request sent and what the window holds, never all a user ever stored (bounded work)
    unknown = sorted({t for t in (*stored.items, *extra, *req.exclude) if t not in t2i})[:MAX_UNKNOWN_LISTED]
    n_events = stored.n_events + sum(1 for t in extra if t in t2i)
    return RankInput(req.user_id, req.k, [t2i[t] for t in tokens], tokens, exclude, n_events, unknown)
