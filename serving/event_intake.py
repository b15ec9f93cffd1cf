"""``POST /v1/events`` behind the route: refuse what the server's state rules out, append durably, count.

A timestamp later than server time + ``serve.device.max_clock_skew_s`` would pin its item last in the history for good;
an event id stored with another item or time, or a user past ``serve.device.max_unknown_items`` distinct unknown ids, is
refused too. Those are 409 (the request is well-formed; the server's state refuses it) and nothing of the request
is stored. Events with unknown items are stored all the same and listed.
"""

from __future__ import annotations

import time

from serving.event_store import EventStore
from serving.event_writer import EventConflict, TooManyUnknownItems
from serving.metrics import Metrics
from serving.schemas import EventsRequest, EventsResponse
from serving.web import field_error


class EventIntake:
    def __init__(self, store: EventStore, known: dict[str, int], max_clock_skew_s: float, metrics: Metrics):
        self.store, self.known, self.skew_s, self.metrics = store, known, max_clock_skew_s, metrics

    async def add(self, req: EventsRequest) -> EventsResponse:
        """Append ``req``'s events (acknowledged after the commit; an exact re-send is a no-op)."""
        latest = time.time() + self.skew_s
        for i, e in enumerate(req.events):
            if e.timestamp is not None and e.timestamp > latest:
                raise field_error(f"events.{i}.timestamp", "is later than server time + serve.device.max_clock_skew_s "
                                  f"({self.skew_s:g} s; nothing of this request was stored)", 409)
        rows = [(e.event_id, e.user_id, e.item_id, e.timestamp) for e in req.events]  # None: the commit's time
        try:
            result = await self.store.append(rows)
        except EventConflict as exc:
            i, event_id = exc.indexes[0], exc.event_ids[0]
            raise field_error(f"events.{i}.event_id", f"event id {event_id!r} of this user is stored with another "
                              "item or timestamp (nothing of this request was stored)", 409) from exc
        except TooManyUnknownItems as exc:
            raise field_error(f"events.{exc.index}.item_id", f"the user already stores {exc.cap} distinct item ids "
                              "outside the catalogue (serve.device.max_unknown_items; nothing of this request was "
                              "stored)",
                              409) from exc
        self.metrics.events.labels("inserted").inc(result.inserted)
        self.metrics.events.labels("duplicate").inc(result.duplicates)
        self.metrics.event_batch.observe(len(rows))
        unknown = sorted({e.item_id for e in req.events if e.item_id not in self.known})
        return EventsResponse(accepted=result.inserted, duplicates=result.duplicates, unknown_items=unknown)
