"""The device service: its parts wired together, and its routes (who may call what: docs/security.md).

Each part has one job, in its own module:

- :mod:`serving.engine` — the device model (``serve.device.runtime``: torch, or onnx on the torch-free runtime);
- :mod:`serving.event_store` + :mod:`serving.event_intake` — durable events, ``POST /v1/events``;
- :mod:`serving.ranker` — ``POST /v1/rank`` in one pass: input (:mod:`serving.rank_input`) → user state
  (:mod:`serving.rank_batcher`) → decision and edit (:mod:`serving.adaptation`, with :mod:`serving.edit_cache`
  and :mod:`serving.request_policy`) → scores (:mod:`serving.rank_batcher`);
- :mod:`serving.cloud_client` — the link to the cloud, its operator switch and its circuit breaker;
- :mod:`serving.bank_sync` — the cached prototype bank (file + background refetch).

:class:`DeviceService` builds them, starts and stops them, and reports health.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from serving.adaptation import Adaptation
from serving.artifacts import Artifacts
from serving.auth import Caller, Credentials
from serving.bank_sync import BankSync
from serving.cloud_client import Breaker, CloudClient
from serving.config import AppConfig
from serving.demo import demo_page, page_csp
from serving.engine import load_engine
from serving.event_intake import EventIntake
from serving.event_store import EventStore
from serving.metrics import Metrics
from serving.rank_batcher import AdmitRank, RankBatcher
from serving.ranker import Ranker
from serving.rate_limit import UserRateLimit, request_cost
from serving.schemas import (
    EVENTS_ERRORS,
    OPERATOR_ERRORS,
    USER_ERRORS,
    CloudSwitch,
    EventsRequest,
    EventsResponse,
    Health,
    RankRequest,
    RankResponse,
    TokenRequest,
    TokenResponse,
)
from serving.web import (
    caller_dependency,
    field_error,
    install_outer_layers,
    key_first_route,
    metrics_response,
    service_app,
)

log = logging.getLogger(__name__)


class DeviceService:
    """One device worker: its parts (see the module docstring), started and stopped with the app."""

    def __init__(self, cfg: AppConfig, art: Artifacts, cloud_url: str | None = None, api_key: str | None = None):
        self.cfg, self.s, self.art = cfg, cfg.serve, art
        s = self.s.device
        self.engine = load_engine(cfg, art)
        db_path, self.cache_path = s.state_paths(cfg.output_dir, art.meta.dataset)
        self.metrics = Metrics("device")
        self.store = EventStore(
            db_path, s.sqlite_synchronous, history_cache_users=s.history_cache_users,
            window=self.engine.max_seq_len,  # the model reads no more; reads stay bounded for long histories
            known=self.engine.token_to_id.keys(), max_unknown=s.max_unknown_items,
        )
        self.cloud = None
        if cloud_url:
            breaker = Breaker(s.cloud_retry_s, s.breaker_window, s.breaker_overruns)
            self.cloud = CloudClient(cloud_url, api_key, s.catchup_timeout_s, breaker, self.metrics,
                                     self.engine.parse_edit)  # fmt: skip
        self.bank = BankSync(self.engine, self.cloud, self.cache_path, s.prototypes_refresh_s, s.cloud_retry_s)
        self.bank.load_cached()
        self.batcher = RankBatcher(self.engine, s.max_batch, s.batch_wait_ms,
                                   lambda record: self.metrics.rank_batch.observe(record.size))  # fmt: skip
        self.adaptation = Adaptation(self.engine, self.cloud, s, self.metrics)
        self.ranker = Ranker(self.engine, self.store, self.batcher, self.adaptation, art.titles, self.metrics)
        self.intake = EventIntake(self.store, self.engine.token_to_id, s.max_clock_skew_s, self.metrics)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def catalogue(self) -> int:
        return self.ranker.catalogue

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()  # the worker's event loop (batches run on it)
        self.bank.start()

    async def stop(self) -> None:
        await self.bank.stop()
        self.adaptation.stop()
        if self.cloud is not None:
            await self.cloud.aclose()
        await asyncio.to_thread(self.store.close)

    def switch_cloud(self, enabled: bool) -> None:
        """``PUT /v1/cloud``: false → the device serves alone (cached bank / base), its cached cloud edits unused."""
        if self.cloud is not None:
            self.cloud.enabled = enabled
        log.info("cloud %s", "enabled" if enabled else "disabled")

    def health(self) -> Health:
        cloud = self.cloud
        return Health(
            service="device",
            model=self.art.meta.model,
            dataset=self.art.meta.dataset,
            n_items=self.catalogue,
            version=self.engine.bank_version,
            prototypes=self.engine.bank_size,
            cloud_url=cloud.base_url if cloud else None,
            cloud_available=cloud.available if cloud else None,
            cloud_enabled=cloud.enabled if cloud else None,
        )


def _caller(request: Request, credential: str) -> Caller | None:
    """Who calls (serving.auth): the operator key or a user token; a user past its rate gets 429 (rate_limit)."""
    caller = request.app.state.credentials.caller(credential)
    if caller is not None and not caller.operator:
        wait = request.app.state.rate_limit.wait_s(caller.user_id, request_cost(request.headers.get("content-length")))
        if wait > 0:  # closing: the refused body is never read nor parsed
            headers = {"Retry-After": UserRateLimit.retry_after(wait), "Connection": "close"}
            raise field_error("authorization", "this user's request rate is over serve.device.user_rate_per_s / "
                              "serve.device.user_burst", 429, headers=headers)
    return caller


# checked before the body is read, once per request (key_first_route); the route reads what it found, with no
# security sub-dependencies to solve again on the ranking path (OpenAPI states the scheme: BEARER)
check_caller = caller_dependency(_caller)


async def _checked_caller(request: Request) -> Caller:
    return request.state.caller


CallerDep = Annotated[Caller, Depends(_checked_caller)]
BEARER = {"security": [{"HTTPBearer": []}, {"APIKeyHeader": []}]}
SECURITY_SCHEMES = {
    "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "the operator key or a user token"},
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the same, as a header"},
}


def require_operator(caller: Caller) -> None:
    if not caller.operator:
        raise field_error("authorization", "needs the operator key (a user token covers one user's data only)", 403)


def require_user(caller: Caller, user_id: str, field: str) -> None:
    if not caller.covers(user_id):
        raise field_error(field, "the credential does not cover this user", 403)


DESCRIPTION = ("On-device ranking with cloud edits, a cached prototype bank, or the base model. Every route but "
               "/healthz, / and /openapi.json needs `Authorization: Bearer <operator key or user token>`.")


def create_device_app(service: DeviceService, operator_key: str) -> FastAPI:
    """The device FastAPI app around ``service`` (started and stopped with the app's lifespan); who may call what
    is docs/security.md: ``operator_key`` and the user tokens it issues."""
    app = service_app(service, "Persona device", DESCRIPTION)
    app.state.credentials = creds = Credentials(operator_key)
    app.state.rate_limit = UserRateLimit(service.s.device.user_rate_per_s, service.s.device.user_burst)
    keyed = APIRouter(route_class=key_first_route(check_caller))
    _user_routes(keyed, service, creds)
    _operator_routes(keyed, service)
    app.include_router(keyed)
    _open_routes(app, service)
    app.openapi = _openapi(app, service)
    # rank requests count as coming from their headers on (AdmitRank, inside the metrics middleware)
    return install_outer_layers(app, service, inner=(AdmitRank, {"batcher": service.batcher}))


def _user_routes(keyed: APIRouter, service: DeviceService, creds: Credentials) -> None:
    """Token issue (operator), events and ranking (the user a credential covers)."""
    ranker = service.ranker

    @keyed.post("/v1/tokens", response_model=TokenResponse, responses=OPERATOR_ERRORS, openapi_extra=BEARER,
                summary="issue a token that covers one user (operator key)")
    async def tokens(body: TokenRequest, caller: CallerDep) -> TokenResponse:
        require_operator(caller)
        token, expires = creds.issue(body.user_id, body.ttl_s or service.s.device.user_token_ttl_s)
        return TokenResponse(token=token, user_id=body.user_id, expires_at=expires)

    @keyed.post("/v1/events", response_model=EventsResponse, responses=EVENTS_ERRORS, openapi_extra=BEARER,
                summary="append user events (durable: acknowledged after commit; idempotent per user and event_id)")
    async def events(body: EventsRequest, caller: CallerDep) -> EventsResponse:
        for i, event in enumerate(body.events):
            require_user(caller, event.user_id, f"events.{i}.user_id")
        return await service.intake.add(body)

    @keyed.post("/v1/rank", response_model=RankResponse, responses=USER_ERRORS, openapi_extra=BEARER,
                summary="rank the full catalogue for a user and/or an explicit history")
    async def rank(body: RankRequest, caller: CallerDep) -> Response:
        if body.user_id is not None:
            require_user(caller, body.user_id, "user_id")
        # a plain dict dumped once: returning a Response skips FastAPI's response_model re-validation and
        # encoding (the model still documents the schema; test_schemathesis checks answers against it)
        payload = json.dumps(await ranker.rank(body), separators=(",", ":"))
        return Response(payload, media_type="application/json")


def _operator_routes(keyed: APIRouter, service: DeviceService) -> None:
    """Cutting the cloud and reading the metrics: the operator key only."""

    @keyed.put("/v1/cloud", response_model=Health, responses=OPERATOR_ERRORS, openapi_extra=BEARER,
               summary="stop calling the cloud (serve from the cached bank / base model) or call it again (operator)")
    async def cloud_switch(body: CloudSwitch, caller: CallerDep) -> Health:
        require_operator(caller)
        service.switch_cloud(body.enabled)
        return service.health()

    @keyed.get("/metrics", summary="Prometheus metrics (operator)", response_class=PlainTextResponse,
               responses=OPERATOR_ERRORS, openapi_extra=BEARER)
    async def metrics(caller: CallerDep):
        require_operator(caller)
        return metrics_response(service.metrics)


def _open_routes(app: FastAPI, service: DeviceService) -> None:
    """/healthz and the demo page (a static shell: every call it makes carries the operator's credential)."""

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return service.health()

    page = demo_page(Path(service.cfg.reports_dir), service.art.meta.dataset)
    page_headers = {"content-security-policy": page_csp(page)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)


def _openapi(app: FastAPI, service: DeviceService):
    def openapi() -> dict:
        if app.openapi_schema is None:  # k's upper bound is the loaded catalogue
            schema = FastAPI.openapi(app)
            schema["components"]["schemas"]["RankRequest"]["properties"]["k"]["maximum"] = service.catalogue
            schema["components"]["securitySchemes"] = SECURITY_SCHEMES
        return app.openapi_schema

    return openapi
