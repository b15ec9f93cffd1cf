"""What both FastAPI apps share: JSON logs, body-size limit, request metrics, 4xx errors, API-key auth."""

from __future__ import annotations

import hmac
import json
import logging
import sys
import time
from contextlib import asynccontextmanager
from typing import Annotated, Protocol

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from serving.http_guards import app_options, install_http_guards
from serving.metrics import Metrics

access_log = logging.getLogger("persona.access")

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_json_logging(level: int = logging.INFO) -> None:
    """Route every logger (ours and uvicorn's) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the device logs its own cloud calls
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


BODY_TIMED_OUT = "persona.body_timed_out"  # scope key: BodyReadTimeout replaced the app's answer by a 408


class ServiceMiddleware:
    """Pure ASGI: 413 on bodies over ``max_body_bytes`` (declared or streamed), request metrics, access log."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, log_requests: bool):
        self.app, self.metrics, self.max_body, self.log_requests = app, metrics, max_body_bytes, log_requests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        state = {"code": 500, "started": False, "too_big": False}
        too_big_msg = f"request body exceeds {self.max_body} bytes"

        async def send_wrapper(message):
            if state["too_big"]:  # the app saw a cut body (e.g. FastAPI's 400): answer 413 instead
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"], state["code"] = True, 413
                    await _plain_error(send, 413, too_big_msg)
                return
            if message["type"] == "http.response.start":
                state["started"], state["code"] = True, message["status"]
            await send(message)

        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            code = 413 if declared.isdigit() else 400
            state["started"], state["code"] = True, code
            await _plain_error(send, code, too_big_msg if code == 413 else "invalid Content-Length header")
        else:
            received = 0

            async def receive_limited():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        state["too_big"] = True
                        raise BodyTooLarge
                return message

            try:
                await self.app(scope, receive_limited, send_wrapper)
            except BodyTooLarge:
                if not state["started"]:
                    state["started"], state["code"] = True, 413
                    await _plain_error(send, 413, too_big_msg)
            finally:
                self._record(scope, state["code"], t0)
            return
        self._record(scope, state["code"], t0)

    def _record(self, scope, status: int, t0: float) -> None:
        if scope.get(BODY_TIMED_OUT):  # the client got BodyReadTimeout's 408, not the app's answer to the cut body
            status = 408
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        seconds = time.perf_counter() - t0
        self.metrics.observe_request(path, scope["method"], status, seconds)
        if self.log_requests:
            access_log.info(
                "request",
                extra={"method": scope["method"], "path": scope["path"], "status": status,
                       "ms": round(seconds * 1e3, 3), "service": self.metrics.service},
            )


class BodyTooLarge(Exception):
    pass


async def _plain_error(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _field(loc) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """422 bodies that name the field (``message``) without echoing the input back; 5xx never leak details."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [{"field": _field(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:5])
        return JSONResponse({"detail": errors, "message": message}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        detail = exc.detail
        if isinstance(detail, dict):
            body = detail
        elif exc.status_code == 400:  # FastAPI could not read the body
            body = {"detail": detail, "message": f"body: {detail}"}
        else:
            body = {"detail": detail, "message": str(detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def field_error(field: str, msg: str, status: int = 422, headers: dict | None = None) -> HTTPException:
    """A 4xx shaped like the validation errors: ``{"detail": [{"field", "msg"}], "message"}``."""
    return HTTPException(status, {"detail": [{"field": field, "msg": msg, "type": "value_error"}],
                                  "message": f"{field}: {msg}"}, headers=headers)


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <PERSONA_API_KEY>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or `X-API-Key: <PERSONA_API_KEY>`")


def api_key_dependency(get_key):
    """A dependency that accepts ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; 401 otherwise."""

    async def check(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header: Annotated[str | None, Security(_header)],
    ) -> None:
        expected = get_key()
        given = bearer.credentials if bearer is not None else header
        if not given:
            raise HTTPException(401, "missing API key (Authorization: Bearer <key> or X-API-Key)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode()):
            raise HTTPException(401, "wrong API key", headers={"WWW-Authenticate": "Bearer"})

    return check


def caller_dependency(resolve):
    """A check for :func:`key_first_route` that finds who calls: ``resolve(request, credential)`` (None → 401) on
    ``Authorization: Bearer X`` or ``X-API-Key: X``, kept in ``request.state.caller`` for the route."""

    async def caller(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header: Annotated[str | None, Security(_header)],
    ):
        given = bearer.credentials if bearer is not None else header
        if not given:
            raise HTTPException(401, "missing credential (Authorization: Bearer <key or token> or X-API-Key)",
                                headers={"WWW-Authenticate": "Bearer"})
        who = resolve(request, given)
        if who is None:
            raise HTTPException(401, "invalid or expired credential", headers={"WWW-Authenticate": "Bearer"})
        request.state.caller = who
        return who

    return caller


def key_first_route(check) -> type[APIRoute]:
    """A route class that runs ``check(request, bearer, header)`` (an :func:`api_key_dependency` or
    :func:`caller_dependency`) before FastAPI reads the body, so an unauthenticated request gets 401 whatever it
    sends (malformed JSON included)."""

    class KeyFirstRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def route(request: Request):
                await check(request, await _bearer(request), await _header(request))
                return await handler(request)

            return route

    return KeyFirstRoute


def metrics_response(metrics: Metrics) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)


class _Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def service_lifespan(service: _Service):
    """A FastAPI lifespan that starts ``service`` with the app and stops it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    return lifespan


def service_app(service, title: str, description: str) -> FastAPI:
    """A FastAPI app around ``service``: started and stopped with the app, its HTTP options, error handlers,
    ``app.state.service`` (what both services' factories begin with)."""
    app = FastAPI(title=title, version="1.0", description=description, lifespan=service_lifespan(service),
                  **app_options(service.s.http))  # fmt: skip
    app.state.service = service
    install_error_handlers(app)
    return app


def install_outer_layers(app: FastAPI, service, inner: tuple[type, dict] | None = None,
                         outer: tuple[type, dict] | None = None) -> FastAPI:  # fmt: skip
    """What both services' factories end with, inside out: the ``inner`` middleware, the metrics / body-size /
    access-log middleware, the ``outer`` middleware, then the HTTP guards (hosts, CORS, headers)."""
    http = service.s.http
    own = (ServiceMiddleware, {"metrics": service.metrics, "max_body_bytes": http.max_body_bytes,
                               "log_requests": http.access_log})  # fmt: skip
    for layer in (inner, own, outer):
        if layer is not None:
            app.add_middleware(layer[0], **layer[1])
    install_http_guards(app, http, service.s.host)
    return app
