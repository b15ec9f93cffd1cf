"""Request and response bodies of the device and cloud APIs (OpenAPI examples included).

Item and user ids are the dataset's tokens as JSON strings (``"50"``, not ``50``); types are strict.
Unknown item ids are not an error: they are ignored for ranking and listed in ``unknown_items``.
Errors are ``{"detail": [{"field", "msg", "type"}], "message": "field: msg"}`` (:class:`ErrorResponse`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
)

from recsys.wire import Encoding


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid UTF-8 text") from exc
    return value


Token = Annotated[
    str, Strict(), StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00]+$"), AfterValidator(_utf8)
]


def _json_int(value):
    """JSON integers only: ``3`` and ``3.0`` (JSON Schema's integer), not ``"3"``, ``true`` or ``3.5``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


StrictInt = Annotated[int, BeforeValidator(_json_int), Strict()]
StrictFloat = Annotated[float, Strict()]
MAX_TIMESTAMP = 7_258_118_400.0  # 2200-01-01T00:00:00Z: later (or non-finite) event times are client bugs
MAX_UNKNOWN_LISTED = 100  # unknown item ids a ranking answer lists at most
MAX_STATE_CHARS = 22_000  # base64 of 4,096 float32 values: wider than any head we train
Adaptation = Literal["cloud-edit", "prototype-cache", "base"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Event(_Body):
    event_id: Token = Field(
        ..., description="client-chosen id, unique per user; re-sending the same event is a no-op, the same id with "
                         "another item or timestamp is a 409"
    )
    user_id: Token
    item_id: Token = Field(..., description="item token of the dataset (e.g. a MovieLens item id)")
    timestamp: StrictFloat | None = Field(
        None, ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False,
        description="unix seconds, at most server time + serve.device.max_clock_skew_s; default: time of receipt "
                    "(orders the history)",
    )


class EventsRequest(_Body):
    events: list[Event] = Field(..., min_length=1, max_length=1000)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"events": [{"event_id": "u1-0001", "user_id": "u1", "item_id": "50", "timestamp": 1700000000}]}
            ]
        }
    )


class EventsResponse(BaseModel):
    accepted: int = Field(..., description="events newly stored (committed before this response)")
    duplicates: int = Field(..., description="events whose event_id was already stored (ignored)")
    unknown_items: list[str] = Field(default_factory=list, description="stored, but not in the model's catalogue")


class RankRequest(_Body):
    user_id: Token | None = Field(
        None, description="rank for this user's stored events (unknown user or none at all: cold start)"
    )
    history: list[Token] | None = Field(
        None, max_length=10_000, description="recent item ids, oldest first; appended after the stored events"
    )
    k: StrictInt = Field(10, ge=1, description="how many items (1 ≤ k ≤ catalogue size)")
    exclude: list[Token] = Field(default_factory=list, max_length=10_000, description="item ids never to return")
    exclude_seen: StrictBool = Field(True, description="leave out items in the user's history")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"user_id": "u1", "k": 5},
                {"history": ["50", "172", "181"], "k": 10, "exclude": ["1"]},
            ]
        }
    )


class RankedItem(BaseModel):
    item_id: str
    title: str | None = None
    score: float


class RankResponse(BaseModel):
    items: list[RankedItem]
    adaptation: Adaptation = Field(..., description="cloud-edit, prototype-cache (cloud slow/down) or base")
    version: str | None = Field(None, description="version of the edit or prototype bank used")
    prototype_id: int | None = None
    history_length: int = Field(..., description="known items in the history the ranking used")
    unknown_items: list[str] = Field(
        default_factory=list, max_length=MAX_UNKNOWN_LISTED,
        description=f"ignored, not in the catalogue: those of the request and of the model's window, at most "
                    f"{MAX_UNKNOWN_LISTED}",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [{"item_id": "100", "title": "Fargo", "score": 7.31}],
                    "adaptation": "cloud-edit",
                    "version": "base-3f2a1c9d0b7e",
                    "prototype_id": 2,
                    "history_length": 3,
                    "unknown_items": [],
                }
            ]
        }
    )


class EditRequest(_Body):
    items: list[Token] = Field(..., max_length=10_000, description="the device's recent item ids, oldest first")
    user_id: Token | None = Field(None, description="optional, for logs only")
    encoding: Encoding = Field(
        "json", description="wire format of the edit; `code` needs the bank of version `bank_version` cached"
    )
    bank_version: str | None = Field(None, max_length=200, description="version of the device's cached bank")
    state: str | None = Field(
        None,
        max_length=MAX_STATE_CHARS,
        pattern=r"^[A-Za-z0-9+/]*={0,2}$",
        description="the device's user state for `items` (its head's input): base64 of `dim` little-endian float32 "
        "values; the distilled edit starts from it instead of encoding the history again (the adapter's ignores it)",
    )

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": ["50", "172", "181"]}]})


MAX_TOKEN_TTL_S = 30 * 86_400
# stated by hand: pydantic writes a BeforeValidator'd int's bounds as "ge"/"le", which JSON Schema does not know
TokenTtl = Annotated[StrictInt, Field(ge=60, le=MAX_TOKEN_TTL_S),
                     WithJsonSchema({"type": "integer", "minimum": 60, "maximum": MAX_TOKEN_TTL_S})]


class TokenRequest(_Body):
    user_id: Token = Field(..., description="the one user the token covers")
    ttl_s: TokenTtl | None = Field(
        None, description="lifetime in seconds, 60 s to 30 days (default serve.device.user_token_ttl_s)"
    )

    model_config = ConfigDict(json_schema_extra={"examples": [{"user_id": "u1", "ttl_s": 3600}]})


class TokenResponse(BaseModel):
    token: str = Field(..., description="send as `Authorization: Bearer <token>` to act for user_id only")
    user_id: str
    expires_at: int = Field(..., description="unix seconds")


class FieldError(BaseModel):
    field: str = Field(..., description="dotted path of the offending field, e.g. `events.0.item_id`")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[FieldError] | str
    message: str = Field(..., description="one line naming the field")


ERRORS = {
    400: {"model": ErrorResponse, "description": "the body could not be read (e.g. not UTF-8)"},
    413: {"model": ErrorResponse, "description": "request body larger than serve.http.max_body_bytes"},
    422: {"model": ErrorResponse, "description": "invalid request; `message` names the field"},
}
AUTH_ERRORS = {401: {"model": ErrorResponse, "description": "missing or wrong API key"}}
USER_ERRORS = {
    **ERRORS,
    401: {"model": ErrorResponse, "description": "missing, invalid or expired credential"},
    403: {"model": ErrorResponse, "description": "the credential does not cover this user (`message` names the field)"},
    429: {"model": ErrorResponse, "description": "the user is over serve.device.user_rate_per_s (see Retry-After)"},
}
EVENTS_ERRORS = {
    **USER_ERRORS,
    409: {"model": ErrorResponse, "description": "refused for the server's state, nothing stored: an event id of this "
          "user stored with another item or timestamp, a timestamp beyond server time + "
          "serve.device.max_clock_skew_s, or "
          "the user's serve.device.max_unknown_items reached (`message` names the field)"},
}
OPERATOR_ERRORS = {
    **USER_ERRORS,
    403: {"model": ErrorResponse, "description": "needs the operator key (a user token is not enough)"},
}


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: Literal["device", "cloud"]
    model: str
    dataset: str
    n_items: int
    version: str | None = Field(None, description="cloud: editor version; device: cached prototype bank version")
    prototypes: int = Field(0, description="prototypes in the (cached) bank")
    cloud_url: str | None = None
    cloud_available: bool | None = None
    cloud_enabled: bool | None = Field(None, description="device: whether it calls its cloud (PUT /v1/cloud)")


class CloudSwitch(_Body):
    enabled: StrictBool = Field(..., description="false: the device stops calling its cloud (cached bank / base)")
