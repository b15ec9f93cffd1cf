"""serving.web: what both apps share, on the smallest real app built with it (in-process): the lifespan, 422s that
name the field, 413 on big bodies, the key checked before the body is read, request metrics, JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from serving import web
from serving.metrics import Metrics, read_samples
from serving.serve_config import ServeConfig

KEY = "sekret"


class Recorder:
    """The smallest service the factories take: its ``serve:`` config and metrics; started and stopped with the app."""

    def __init__(self):
        self.s = ServeConfig.model_validate({"http": {"max_body_bytes": 1024, "access_log": True}})
        self.metrics = Metrics("test")
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int
    name: str


def make_app(service: Recorder):
    app = web.service_app(service, "test", "a test app")

    @app.post("/echo")
    async def echo(body: Body) -> dict:
        return body.model_dump()

    @app.get("/teapot")
    async def teapot():
        raise web.field_error("pot", "is a teapot", 418, headers={"X-Why": "test"})

    @app.get("/metrics")
    async def metrics():
        return web.metrics_response(service.metrics)

    keyed = APIRouter(route_class=web.key_first_route(web.api_key_dependency(lambda: KEY)))

    @keyed.post("/keyed")
    async def keyed_route(body: Body) -> dict:
        return {"k": body.k}

    app.include_router(keyed)
    return web.install_outer_layers(app, service)


@pytest.fixture()
def live():
    service = Recorder()
    with TestClient(make_app(service), base_url="http://127.0.0.1") as client:
        yield service, client
    assert service.events == ["start", "stop"]


def test_the_service_starts_with_the_app(live):
    service, client = live
    assert service.events == ["start"]
    assert client.post("/echo", json={"k": 1, "name": "a"}).json() == {"k": 1, "name": "a"}


def test_a_422_names_the_fields_and_never_echoes_the_input(live):
    _, client = live
    resp = client.post("/echo", json={"k": "not-a-number-secret", "extra": 1})
    assert resp.status_code == 422
    body = resp.json()
    assert {e["field"] for e in body["detail"]} == {"k", "name", "extra"}
    assert body["message"].startswith("k: ") and "not-a-number-secret" not in resp.text


def test_field_error_is_shaped_like_a_validation_error(live):
    _, client = live
    resp = client.get("/teapot")
    assert resp.status_code == 418 and resp.headers["x-why"] == "test"
    assert resp.json() == {"detail": [{"field": "pot", "msg": "is a teapot", "type": "value_error"}],
                           "message": "pot: is a teapot"}


def test_bodies_over_the_limit_get_413_declared_or_streamed(live):
    _, client = live
    big = json.dumps({"k": 1, "name": "x" * 2000}).encode()
    declared = client.post("/echo", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["message"] == "request body exceeds 1024 bytes"
    chunks = (big[i : i + 100] for i in range(0, len(big), 100))  # no Content-Length: counted as it arrives
    streamed = client.post("/echo", content=chunks, headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_the_key_is_checked_before_the_body_is_read(live):
    _, client = live
    assert client.post("/keyed", content=b"{not json").status_code == 401  # not 422: the body is never parsed
    wrong = client.post("/keyed", json={"k": 1, "name": "a"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["message"] == "wrong API key"
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/keyed", json={"k": 2, "name": "a"}, headers={"X-API-Key": KEY}).json() == {"k": 2}
    assert client.post("/keyed", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"}).status_code == 422


def test_requests_are_counted_by_route_method_and_status(live):
    _, client = live
    client.post("/echo", json={"k": 1, "name": "a"})
    client.post("/echo", json={})
    client.get("/nowhere")
    samples = read_samples(client.get("/metrics").text)
    counts = {(s[1]["route"], s[1]["status"]): s[2] for s in samples if s[0] == "persona_requests_total"}
    assert counts[("/echo", "200")] == 1 and counts[("/echo", "422")] == 1 and counts[("unmatched", "404")] == 1
    assert all(s[1]["service"] == "test" for s in samples if s[0] == "persona_requests_total")


def test_an_invalid_content_length_is_a_400():
    sent = []

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app must not see the request")

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [(b"content-length", b"12x")]}
    asyncio.run(web.ServiceMiddleware(app, Metrics("test"), 1024, False)(scope, None, send))
    assert sent[0]["status"] == 400 and json.loads(sent[1]["body"])["message"] == "invalid Content-Length header"


def test_json_log_lines_carry_the_extra_fields_and_the_exception():
    record = logging.LogRecord("persona.access", logging.INFO, __file__, 1, "request %s", ("done",), None)
    record.status, record.path = 200, "/v1/rank"
    line = json.loads(web.JsonFormatter().format(record))
    assert (line["level"], line["logger"], line["msg"], line["status"], line["path"]) == (
        "info", "persona.access", "request done", 200, "/v1/rank")
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(web.JsonFormatter().format(failed))["exc"]
