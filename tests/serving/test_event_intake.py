"""Events behind the route: stored durably and counted, unknown items stored and listed, and the refusals that
depend on the server's state (its clock, what an event id or a user already stores) are 409 with nothing stored."""

from __future__ import annotations

import asyncio
import time

import pytest
from starlette.exceptions import HTTPException

from serving.event_intake import EventIntake
from serving.event_store import EventStore
from serving.metrics import Metrics
from serving.schemas import EventsRequest
from tests.serving.test_services import metric


def events(*rows) -> EventsRequest:
    return EventsRequest(events=[{"event_id": e, "user_id": u, "item_id": i, **(more[0] if more else {})}
                                 for e, u, i, *more in rows])


def test_events_are_stored_counted_and_refused_by_the_servers_state(tmp_path):
    known = {"50": 1, "172": 2}
    store = EventStore(tmp_path / "events.db", "NORMAL", known=known.keys(), max_unknown=1)
    metrics = Metrics("device")
    intake = EventIntake(store, known, max_clock_skew_s=60, metrics=metrics)

    async def go():
        ok = await intake.add(events(("1", "ann", "50"), ("2", "ann", "x1")))
        assert (ok.accepted, ok.duplicates, ok.unknown_items) == (2, 0, ["x1"])
        again = await intake.add(events(("1", "ann", "50")))
        assert (again.accepted, again.duplicates) == (0, 1)
        refusals = [
            (events(("3", "ann", "172", {"timestamp": time.time() + 600})), "events.0.timestamp"),  # past the skew
            (events(("4", "ann", "172"), ("1", "ann", "172")), "events.1.event_id"),  # id stored with another item
            (events(("5", "ann", "x2")), "events.0.item_id"),  # a second unknown id: past max_unknown
        ]
        for req, field in refusals:
            with pytest.raises(HTTPException) as refused:
                await intake.add(req)
            assert refused.value.status_code == 409 and refused.value.detail["detail"][0]["field"] == field

    asyncio.run(go())
    try:
        assert store.user_history("ann").items == ["50", "x1"]  # nothing of a refused request was stored
    finally:
        store.close()
    text = metrics.render().decode()
    assert metric(text, "persona_events_total", result="inserted") == 2
    assert metric(text, "persona_events_total", result="duplicate") == 1
