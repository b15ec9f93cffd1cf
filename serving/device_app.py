"""The device service: durable events, and full-catalogue ranking with the best adaptation available.

Per ranking request: the user's stored events (+ an explicit recent history) → user state → nearest
prototype of the cached bank. A cloud edit is reused until the request policy asks for a new one
(:mod:`serving.request_policy`: every ``refresh_every`` new events or a change of prototype or bank; or
the events whose user state drifted most; or at random). A request waits at most
``budget_ms`` for the cloud; when the cloud is slow, failing or down the request is answered with the
cached prototype's edit (``prototype-cache``) or the base head (``base``), and the late answer, if it
comes, fills the cache for the next request (background catch-up). The cloud never causes an error.

Concurrent ranking requests are scored together (:mod:`serving.rank_batcher`: ``serve.max_batch``,
``serve.batch_wait_ms``); stored histories are read through the event store's in-memory cache, in a
thread, bounded to the last ``max_seq_len`` items (plus per-item counts for ``exclude_seen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from recsys.models import HeadEdit
from recsys.runtime import DeviceRuntime, EditPayload, PrototypeSnapshot
from serving.artefacts import Artefacts
from serving.auth import Caller, Credentials
from serving.cloud_client import CloudClient, CloudError
from serving.config import AppConfig
from serving.demo import demo_page, page_csp
from serving.event_store import EventConflict, EventStore, TooManyUnknownItems, UserHistory
from serving.http_guards import app_options, install_http_guards
from serving.metrics import Metrics
from serving.rank_batcher import AdmitRank, Choice, Encoded, RankBatcher, RankJob
from serving.rate_limit import UserRateLimit, request_cost
from serving.request_policy import RequestPolicy
from serving.schemas import (
    EVENTS_ERRORS,
    MAX_UNKNOWN_LISTED,
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
    ServiceMiddleware,
    caller_dependency,
    field_error,
    install_error_handlers,
    key_first_route,
    metrics_response,
    service_lifespan,
)

log = logging.getLogger(__name__)


@dataclass
class CachedEdit:
    payload: EditPayload | None  # None while the request is in flight
    edit: HeadEdit | None
    n_events: int  # history length when it was requested
    prototype: int | None  # the device's prototype then
    bank: str | None  # the bank version then
    state: torch.Tensor | None = None  # the user state then (the request policy's drift reference)


class DeviceService:
    """State of one device worker: runtime, event store, cloud client, per-user edit cache."""

    def __init__(self, cfg: AppConfig, art: Artefacts, cloud_url: str | None = None, api_key: str | None = None):
        self.cfg, self.s = cfg, cfg.serve
        self.art = art
        self.runtime = DeviceRuntime(art.model, art.tokens, cache_gate=self.s.cache_gate)
        self._tokens = [str(t) for t in art.tokens]  # item id → token, as sent
        db_path, self.cache_path = self.s.state_paths(cfg.output_dir, art.meta.dataset)
        if self.cache_path.is_file():
            try:
                self.runtime.set_prototypes(PrototypeSnapshot.load(self.cache_path))
            except (ValueError, OSError) as exc:
                log.warning("ignoring prototype cache %s: %s", self.cache_path, exc)
        self.metrics = Metrics("device")
        self.store = EventStore(
            db_path, self.s.sqlite_synchronous, history_cache_users=self.s.history_cache_users,
            window=art.model.max_seq_len,  # the model reads no more; reads stay bounded for long histories
            known=self.runtime.token_to_id.keys(), max_unknown=self.s.max_unknown_items,
        )
        self.batcher = RankBatcher(self.runtime, self.s.max_batch, self.s.batch_wait_ms, self._observe_batch)
        self.cloud = (
            CloudClient(cloud_url, api_key, self.s.catchup_timeout_s, self.s.cloud_retry_s, self.metrics)
            if cloud_url
            else None
        )
        self.edits: OrderedDict[str, CachedEdit] = OrderedDict()
        self.policy = (
            None if self.s.request_policy == "refresh" else RequestPolicy(self.s.request_policy, self.s.request_rate)
        )
        self.decided: OrderedDict[str, int] = OrderedDict()  # key → history length of its last policy decision
        self.inflight: dict[str, tuple[asyncio.Task, CachedEdit]] = {}  # key → (fetch, what it was asked for)
        # which of the last breaker_window cloud answers came over budget (breaker_overruns of them trip the breaker)
        self.overruns: deque[bool] = deque(maxlen=self.s.breaker_window)
        self.cloud_enabled = True  # PUT /v1/cloud: false → the device serves alone (cached bank / base)
        self._bg: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _observe_batch(self, record) -> None:
        self.metrics.rank_batch.observe(record.size)

    @property
    def catalogue(self) -> int:
        return self.runtime.n_items - 1  # id 0 is padding

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()  # the worker's event loop (batches run on it)
        if self.cloud is not None:
            self._bg = asyncio.create_task(self._prototype_loop())

    async def stop(self) -> None:
        if self._bg is not None:
            self._bg.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._bg
        for task, _ in list(self.inflight.values()):
            task.cancel()
        if self.cloud is not None:
            await self.cloud.aclose()
        await asyncio.to_thread(self.store.close)

    async def refresh_prototypes(self) -> bool:
        """Fetch the bank snapshot if it changed; keep it in memory and in the cache file."""
        current = self.runtime.prototypes.version if self.runtime.prototypes else None
        snapshot = await self.cloud.prototypes(etag=current)
        if snapshot is None or snapshot.version == current:
            return False
        try:
            self.runtime.set_prototypes(snapshot)
        except ValueError as exc:
            raise CloudError(str(exc)) from exc
        await asyncio.to_thread(snapshot.save, self.cache_path)
        log.info("prototype bank updated", extra={"version": snapshot.version, "prototypes": snapshot.size})
        return True

    async def _prototype_loop(self) -> None:
        while True:
            delay = self.s.prototypes_refresh_s
            if self.cloud_reachable:
                try:
                    await self.refresh_prototypes()
                except CloudError as exc:
                    log.warning("prototype refresh failed", extra={"error": str(exc)})
                    delay = min(delay, max(self.s.cloud_retry_s, 0.2))
            else:
                delay = min(delay, max(self.s.cloud_retry_s, 0.2))
            await asyncio.sleep(delay)

    # ---- events ---------------------------------------------------------------------------------

    async def add_events(self, req: EventsRequest) -> EventsResponse:
        now = time.time()
        latest = now + self.s.max_clock_skew_s
        # a future time would pin its item last in the history for good; a refusal that depends on the server's
        # state (its clock, what the user stores) is a 409, not a 422: the request itself is well-formed
        for i, e in enumerate(req.events):
            if e.timestamp is not None and e.timestamp > latest:
                raise field_error(f"events.{i}.timestamp", "is later than server time + serve.max_clock_skew_s "
                                  f"({self.s.max_clock_skew_s:g} s; nothing of this request was stored)", 409)
        rows = [(e.event_id, e.user_id, e.item_id, e.timestamp) for e in req.events]  # None: the commit's time
        try:
            result = await self.store.append(rows)
        except EventConflict as exc:
            i, event_id = exc.indexes[0], exc.event_ids[0]
            raise field_error(f"events.{i}.event_id", f"event id {event_id!r} of this user is stored with another "
                              "item or timestamp (nothing of this request was stored)", 409) from exc
        except TooManyUnknownItems as exc:
            raise field_error(f"events.{exc.index}.item_id", f"the user already stores {exc.cap} distinct item ids "
                              "outside the catalogue (serve.max_unknown_items; nothing of this request was stored)",
                              409) from exc
        self.metrics.events.labels("inserted").inc(result.inserted)
        self.metrics.events.labels("duplicate").inc(result.duplicates)
        self.metrics.event_batch.observe(len(rows))
        unknown = sorted({e.item_id for e in req.events if e.item_id not in self.runtime.token_to_id})
        return EventsResponse(accepted=result.inserted, duplicates=result.duplicates, unknown_items=unknown)

    # ---- ranking --------------------------------------------------------------------------------

    async def rank(self, req: RankRequest) -> RankResponse:
        return RankResponse.model_validate(await self.rank_dict(req))

    async def rank_dict(self, req: RankRequest) -> dict:
        """:meth:`rank` as the plain JSON-ready dict the route sends (no model objects per item)."""
        if not 1 <= req.k <= self.catalogue:
            raise field_error("k", f"must be between 1 and the catalogue size {self.catalogue}")
        t2i = self.runtime.token_to_id
        stored = UserHistory()
        if req.user_id is not None:  # bounded read (last max_seq_len items + item counts), in a thread: SQLite
            stored = await asyncio.to_thread(self.store.user_history, req.user_id)
        extra = req.history or []
        ids = [t2i[t] for t in stored.items + extra if t in t2i]
        # what this request sent and what the model's window holds, never all a user ever stored (bounded work)
        unknown = sorted({t for t in (*stored.items, *extra, *req.exclude) if t not in t2i})[:MAX_UNKNOWN_LISTED]
        exclude = {t2i[t] for t in req.exclude if t in t2i}
        if req.exclude_seen:  # every stored item, not only those in the window
            exclude.update(ids, (t2i[t] for t in stored.counts if t in t2i))

        window = ids[-self.runtime.model.max_seq_len :]
        n_events = stored.n_events + sum(1 for t in extra if t in t2i)  # known items only
        key = None
        if self.cloud is not None:  # the device's edit-cache key
            if req.user_id is not None:
                key = f"u:{req.user_id}"
            else:
                key = "h:" + hashlib.sha1(repr(window).encode()).hexdigest()
        job = RankJob(window, req.k, exclude, choose=lambda *a: self._adaptation_now(key, n_events, *a))
        result = await self.batcher.rank(job)
        if isinstance(result, Encoded):  # the cloud has to be asked: wait (within budget), then score
            choice = await self._adaptation_fetch(key, window, req.user_id, n_events, result.prototype, result.state)
            result = await self.batcher.rank(RankJob(window, req.k, exclude, state=result.state, choice=choice))
        choice = result.choice
        self.metrics.adaptation.labels(choice.kind).inc()
        tok, titles = self._tokens, self.art.titles
        return {
            "items": [{"item_id": tok[i], "title": titles[i], "score": s} for i, s in zip(result.items, result.scores)],
            "adaptation": choice.kind,
            "version": choice.version,
            "prototype_id": choice.prototype_id,
            "history_length": n_events,
            "unknown_items": unknown,
        }

    @property
    def cloud_reachable(self) -> bool:
        """The device may call its cloud now: one is configured, enabled, and its breaker is closed."""
        return self.cloud is not None and self.cloud_enabled and self.cloud.available

    def _fallback(self, proto: int | None) -> Choice:
        bank = self.runtime.prototypes
        edit = self.runtime.prototype_edit(proto) if bank is not None else None
        if edit is not None:
            return Choice("prototype-cache", bank.version, proto, edit)
        return Choice("base", None, None, None)  # no bank, out of distribution, or an edit that did not gain

    @staticmethod
    def _from_cloud(c: CachedEdit) -> Choice:
        kind = "cloud-edit" if c.edit is not None else "base"
        return Choice(kind, c.payload.version, c.payload.prototype_id, c.edit)

    def _adaptation_now(
        self, key: str | None, n_events: int, proto: int | None, state: torch.Tensor
    ) -> Choice | None:
        """The adaptation if it is known without waiting (no cloud, a current cached edit, the policy does not
        ask, cloud down); else None."""
        if self.cloud is None:
            return self._fallback(proto)
        if not self.cloud_enabled:  # cut (PUT /v1/cloud): the device serves alone, its cached cloud edits unused
            self.metrics.fallback.labels("disabled").inc()
            return self._fallback(proto)
        bank = self.runtime.prototypes.version if self.runtime.prototypes else None
        cached = self.edits.get(key)
        if self._current(cached, n_events, proto, bank):
            self.edits.move_to_end(key)
            return self._from_cloud(cached)
        if self.policy is not None:  # the user's own edit of this bank stays usable until the policy asks
            usable = cached is not None and cached.bank == bank
            if not self._policy_asks(key, n_events, state, cached if usable else None):
                age, limit = (n_events - cached.n_events if usable else 0), self.s.edit_max_age
                fresh = usable and (limit is None or age < limit)  # a stale edit can rank below the fallback
                return self._from_cloud(cached) if fresh else self._fallback(proto)
        if not self.cloud_reachable:
            self.metrics.fallback.labels("unavailable" if self.cloud_enabled else "disabled").inc()
            return self._fallback(proto)
        return None

    def _policy_asks(self, key: str | None, n_events: int, state: torch.Tensor, cached: CachedEdit | None) -> bool:
        """One decision per new event of a device: does it ask the cloud? Drift is measured from the state its
        usable cached edit was asked with (none: infinite, it asks first)."""
        if self.decided.get(key) == n_events:  # decided for this history already (the answer may be on its way)
            return False
        self.decided[key] = n_events
        self.decided.move_to_end(key)
        while len(self.decided) > self.s.edit_cache_size:
            self.decided.popitem(last=False)
        signal = float("inf") if cached is None or cached.state is None else float(torch.dist(state, cached.state))
        asked = self.policy.ask(signal)
        self.metrics.cloud_ask.labels("asked" if asked else "skipped").inc()
        return asked

    async def _adaptation_fetch(
        self, key: str, window: list[int], user_id: str | None, n_events: int, proto: int | None,
        state: torch.Tensor,
    ) -> Choice:
        """Ask the cloud for this device's edit (sharing a request in flight); wait at most ``budget_ms``."""
        bank = self.runtime.prototypes.version if self.runtime.prototypes else None
        cached = self.edits.get(key)
        if self._current(cached, n_events, proto, bank):  # filled meanwhile by another request
            return self._from_cloud(cached)
        if not self.cloud_reachable:
            self.metrics.fallback.labels("unavailable" if self.cloud_enabled else "disabled").inc()
            return self._fallback(proto)
        pending = self.inflight.get(key)
        # a request already in flight for this device is shared, unless it was for an older history
        if pending is not None and self._current(pending[1], n_events, proto, bank):
            task = pending[0]
        else:
            tokens = [str(self.art.tokens[i]) for i in window]
            task = asyncio.create_task(self._fetch(key, tokens, user_id, n_events, proto, bank, state))
            task.add_done_callback(_consume)  # a late failure nobody waits for any more is not an error
            self.inflight[key] = (task, CachedEdit(None, None, n_events, proto, bank, state))
        try:
            fresh = await asyncio.wait_for(asyncio.shield(task), self.s.budget_ms / 1e3)
        except asyncio.TimeoutError:
            # the fetch goes on (its answer fills the cache); only a cloud that misses the budget on many of the
            # recent answers is skipped for a while: a few slow answers under load must not send every user to
            # the fallback for cloud_retry_s
            self.overruns.append(True)
            if sum(self.overruns) >= self.s.breaker_overruns:
                self.cloud.mark_down()
                self.overruns.clear()
            self.metrics.fallback.labels("timeout").inc()
            log.warning("cloud edit over budget", extra={"key": key, "budget_ms": self.s.budget_ms})
            return self._fallback(proto)
        except CloudError as exc:
            self.metrics.fallback.labels("error").inc()
            log.warning("cloud edit failed", extra={"key": key, "error": str(exc)})
            return self._fallback(proto)
        self.overruns.append(False)
        return self._from_cloud(fresh)

    def _current(self, c: CachedEdit | None, n_events: int, proto: int | None, bank: str | None) -> bool:
        """Whether the cached (or in-flight) edit ``c`` answers this history without a new request."""
        if c is None or c.prototype != proto or c.bank != bank:
            return False
        if self.policy is None:  # refresh: every refresh_every new events
            return c.n_events <= n_events < c.n_events + self.s.refresh_every
        return c.n_events == n_events  # drift / random: a new event is a new decision

    async def _fetch(
        self, key: str, tokens: list[str], user_id: str | None, n_events: int, proto, bank, state
    ) -> CachedEdit:
        try:
            cached_bank = self.runtime.edit_encoding_ready
            encoding = self.s.edit_encoding if self.s.edit_encoding != "code" or cached_bank else "fp32"
            payload = await self.cloud.edit(tokens, user_id, encoding, cached_bank)
            try:
                edit = self.runtime.decode_edit(payload)
                if edit is not None:
                    self._check_edit(edit)
            except (ValueError, RuntimeError) as exc:
                raise CloudError(f"unusable edit: {exc}") from exc
            cached = CachedEdit(payload, edit, n_events, proto, bank, state)
            newer = self.edits.get(key)
            if newer is None or newer.n_events <= n_events:  # a late answer never replaces a newer one
                self.edits[key] = cached
                self.edits.move_to_end(key)
                while len(self.edits) > self.s.edit_cache_size:
                    self.edits.popitem(last=False)
            return cached
        finally:
            if self.inflight.get(key, (None,))[0] is asyncio.current_task():
                del self.inflight[key]

    def _check_edit(self, edit: HeadEdit) -> None:
        dim, n_layers = self.runtime.model.head.dim, len(self.runtime.model.head.layers)
        if len(edit.dW) != n_layers:
            raise ValueError(f"edit has {len(edit.dW)} layers, head has {n_layers}")
        for w, b in zip(edit.dW, edit.db):
            if w is not None and tuple(w.shape) != (dim, dim) or b is not None and tuple(b.shape) != (dim,):
                raise ValueError(f"edit shapes do not match the head dim {dim}")

    def health(self) -> Health:
        bank = self.runtime.prototypes
        return Health(
            service="device",
            model=self.art.meta.model,
            dataset=self.art.meta.dataset,
            n_items=self.catalogue,
            version=bank.version if bank else None,
            prototypes=bank.size if bank else 0,
            cloud_url=self.cloud.base_url if self.cloud else None,
            cloud_available=self.cloud.available if self.cloud else None,
            cloud_enabled=self.cloud_enabled if self.cloud else None,
        )


def _consume(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()


def _caller(request: Request, credential: str) -> Caller | None:
    """Who calls (serving.auth): the operator key or a user token; a user past its rate gets 429 (rate_limit)."""
    caller = request.app.state.credentials.caller(credential)
    if caller is not None and not caller.operator:
        wait = request.app.state.rate_limit.wait_s(caller.user_id, request_cost(request.headers.get("content-length")))
        if wait > 0:  # closing: the refused body is never read nor parsed
            headers = {"Retry-After": UserRateLimit.retry_after(wait), "Connection": "close"}
            raise field_error("authorization", "this user's request rate is over serve.user_rate_per_s / "
                              "serve.user_burst", 429, headers=headers)
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


def create_device_app(service: DeviceService, operator_key: str) -> FastAPI:
    """The device FastAPI app around ``service`` (started and stopped with the app's lifespan); who may call what
    is docs/security.md: ``operator_key`` and the user tokens it issues."""
    app = FastAPI(
        title="Persona device",
        version="1.0",
        description="On-device ranking with cloud edits, a cached prototype bank, or the base model. Every route "
        "but /healthz, / and /openapi.json needs `Authorization: Bearer <operator key or user token>`.",
        lifespan=service_lifespan(service),
        **app_options(service.s.http),
    )
    app.state.service = service
    app.state.credentials = creds = Credentials(operator_key)
    app.state.rate_limit = UserRateLimit(service.s.user_rate_per_s, service.s.user_burst)
    install_error_handlers(app)
    keyed = APIRouter(route_class=key_first_route(check_caller))

    @keyed.post("/v1/tokens", response_model=TokenResponse, responses=OPERATOR_ERRORS, openapi_extra=BEARER,
                summary="issue a token that covers one user (operator key)")
    async def tokens(body: TokenRequest, caller: CallerDep) -> TokenResponse:
        require_operator(caller)
        token, expires = creds.issue(body.user_id, body.ttl_s or service.s.user_token_ttl_s)
        return TokenResponse(token=token, user_id=body.user_id, expires_at=expires)

    @keyed.post("/v1/events", response_model=EventsResponse, responses=EVENTS_ERRORS, openapi_extra=BEARER,
                summary="append user events (durable: acknowledged after commit; idempotent per user and event_id)")
    async def events(body: EventsRequest, caller: CallerDep) -> EventsResponse:
        for i, event in enumerate(body.events):
            require_user(caller, event.user_id, f"events.{i}.user_id")
        return await service.add_events(body)

    @keyed.post(
        "/v1/rank",
        response_model=RankResponse,
        summary="rank the full catalogue for a user and/or an explicit history",
        responses=USER_ERRORS,
        openapi_extra=BEARER,
    )
    async def rank(body: RankRequest, caller: CallerDep) -> Response:
        if body.user_id is not None:
            require_user(caller, body.user_id, "user_id")
        # a plain dict dumped once: returning a Response skips FastAPI's response_model re-validation and
        # encoding (the model still documents the schema; test_schemathesis checks answers against it)
        payload = json.dumps(await service.rank_dict(body), separators=(",", ":"))
        return Response(payload, media_type="application/json")

    @keyed.put("/v1/cloud", response_model=Health, responses=OPERATOR_ERRORS, openapi_extra=BEARER,
               summary="stop calling the cloud (serve from the cached bank / base model) or call it again (operator)")
    async def cloud_switch(body: CloudSwitch, caller: CallerDep) -> Health:
        require_operator(caller)
        service.cloud_enabled = body.enabled
        log.info("cloud %s", "enabled" if body.enabled else "disabled")
        return service.health()

    @keyed.get("/metrics", summary="Prometheus metrics (operator)", response_class=PlainTextResponse,
               responses=OPERATOR_ERRORS, openapi_extra=BEARER)
    async def metrics(caller: CallerDep):
        require_operator(caller)
        return metrics_response(service.metrics)

    app.include_router(keyed)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return service.health()

    page = demo_page(Path(service.cfg.reports_dir), service.art.meta.dataset)
    page_headers = {"content-security-policy": page_csp(page)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo() -> HTMLResponse:  # a static shell: every call it makes carries the operator's credential
        return HTMLResponse(page, headers=page_headers)

    def openapi() -> dict:
        if app.openapi_schema is None:  # k's upper bound is the loaded catalogue
            schema = FastAPI.openapi(app)
            schema["components"]["schemas"]["RankRequest"]["properties"]["k"]["maximum"] = service.catalogue
            schema["components"]["securitySchemes"] = SECURITY_SCHEMES
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(AdmitRank, batcher=service.batcher)  # rank requests count as coming from their headers on
    app.add_middleware(
        ServiceMiddleware, metrics=service.metrics, max_body_bytes=service.s.http.max_body_bytes,
        log_requests=service.s.http.access_log,
    )
    install_http_guards(app, service.s.http, service.s.host)
    return app
