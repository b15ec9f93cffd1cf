"""serving.schemas: the request bodies' rules (tokens, strict JSON types, bounds, unknown keys), validated from JSON as
the apps read them, and the JSON Schema the OpenAPI document states."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from pydantic import ValidationError

from serving.schemas import (
    MAX_TIMESTAMP,
    MAX_TOKEN_TTL_S,
    CloudSwitch,
    EditRequest,
    EventsRequest,
    RankRequest,
    RankResponse,
    TokenRequest,
)


def _event(**kw) -> dict:
    return {"event_id": "e1", "user_id": "u1", "item_id": "50", **kw}


def _fails(model, body: dict) -> str:
    """The dotted location of the first error ``model`` finds in the JSON of ``body``."""
    with pytest.raises(ValidationError) as exc:
        model.model_validate_json(json.dumps(body))
    return ".".join(str(p) for p in exc.value.errors()[0]["loc"])


def test_a_valid_event_batch_with_and_without_timestamps():
    body = EventsRequest.model_validate_json(json.dumps({"events": [_event(timestamp=1700000000), _event()]}))
    assert body.events[0].timestamp == 1.7e9 and body.events[1].timestamp is None


@pytest.mark.parametrize(("event", "where"), [
    (_event(item_id=50), "events.0.item_id"),  # ids are JSON strings
    (_event(item_id=""), "events.0.item_id"),
    (_event(user_id="x" * 257), "events.0.user_id"),
    (_event(user_id="a\x00b"), "events.0.user_id"),
    (_event(timestamp=-1), "events.0.timestamp"),
    (_event(timestamp=MAX_TIMESTAMP + 1), "events.0.timestamp"),
    (_event(timestamp="1700000000"), "events.0.timestamp"),
    (_event(colour="red"), "events.0.colour"),  # unknown keys are errors
])
def test_bad_events_are_named_by_their_field(event, where):
    assert _fails(EventsRequest, {"events": [event]}) == where


def test_an_event_batch_holds_1_to_1000_events():
    assert _fails(EventsRequest, {"events": []}) == "events"
    assert _fails(EventsRequest, {"events": [_event()] * 1001}) == "events"
    assert len(EventsRequest.model_validate({"events": [_event()] * 1000}).events) == 1000


def test_lone_surrogates_are_not_text():
    with pytest.raises(ValidationError) as exc:
        EventsRequest.model_validate({"events": [_event(item_id="\ud800")]})
    assert exc.value.errors()[0]["loc"] == ("events", 0, "item_id")


@pytest.mark.parametrize(("k", "ok"), [(3, True), (3.0, True), ("3", False), (True, False), (3.5, False), (0, False)])
def test_k_is_a_json_integer_of_at_least_one(k, ok):
    if ok:
        assert RankRequest.model_validate_json(json.dumps({"k": k})).k == 3
    else:
        assert _fails(RankRequest, {"k": k}) == "k"


def test_rank_request_defaults_and_strict_booleans():
    body = RankRequest.model_validate_json("{}")
    assert (body.user_id, body.history, body.k, body.exclude, body.exclude_seen) == (None, None, 10, [], True)
    assert _fails(RankRequest, {"exclude_seen": "false"}) == "exclude_seen"
    assert _fails(CloudSwitch, {"enabled": 1}) == "enabled"


def test_the_edit_requests_state_is_base64_and_bounded():
    state = base64.b64encode(np.arange(4, dtype="<f4").tobytes()).decode()
    assert EditRequest.model_validate({"items": ["1"], "state": state}).state == state
    assert _fails(EditRequest, {"items": ["1"], "state": "not base64!"}) == "state"
    assert _fails(EditRequest, {"items": ["1"], "state": "A" * 22_004}) == "state"
    assert _fails(EditRequest, {"items": ["1"], "encoding": "xml"}) == "encoding"


def test_token_ttl_bounds_are_enforced_and_stated_in_the_schema():
    assert TokenRequest.model_validate({"user_id": "u", "ttl_s": 60}).ttl_s == 60
    for ttl in (59, MAX_TOKEN_TTL_S + 1, "3600"):
        assert _fails(TokenRequest, {"user_id": "u", "ttl_s": ttl}) == "ttl_s"
    ttl_schema = TokenRequest.model_json_schema()["properties"]["ttl_s"]["anyOf"][0]
    assert ttl_schema == {"type": "integer", "minimum": 60, "maximum": MAX_TOKEN_TTL_S}


def test_responses_keep_their_examples_valid():
    for model in (RankResponse, EventsRequest, RankRequest, TokenRequest):
        for example in model.model_config["json_schema_extra"]["examples"]:
            model.model_validate(example)
