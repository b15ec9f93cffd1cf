"""The benchmarks' load generator (serving.load_gen) against a live uvicorn app on 127.0.0.1: it sends what it is
told, counts what failed, and its percentiles are nearest-rank."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.load_gen import load, ms, percentile
from serving.local_services import free_port
from tests.serving.conftest import LiveServer


def test_percentile_is_the_nearest_rank():
    values = [float(v) for v in range(101, 0, -1)]  # 1..101, unsorted
    assert percentile(values, 50) == 51.0
    assert percentile(values, 99) == 100.0
    assert percentile(values, 100) == 101.0 and percentile(values, 0) == 1.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None
    assert ms(0.0123456) == 12.346 and ms(None) is None


@pytest.fixture(scope="module")
def app_server():
    app = FastAPI()
    seen: list[dict] = []

    @app.post("/v1/rank")
    async def rank(request: Request) -> dict:
        seen.append({"body": await request.json(), "key": request.headers.get("authorization")})
        return {"ok": True}

    @app.post("/v1/fail")
    async def fail() -> JSONResponse:
        return JSONResponse({"detail": "no"}, status_code=503)

    with LiveServer(app) as server:
        yield server, seen


def test_load_sends_n_requests_over_the_connections_and_times_them(app_server):
    server, seen = app_server
    seen.clear()
    bodies = [b'{"user_id": "a"}', b'{"user_id": "b"}']
    got = asyncio.run(load(server.port, bodies, 40, 4, 30, headers="Authorization: Bearer k\r\n"))
    assert got["requests"] == 40 and got["errors"] == 0 and got["concurrency"] == 4
    assert len(seen) == 40 and {s["key"] for s in seen} == {"Bearer k"}
    assert sorted(s["body"]["user_id"] for s in seen) == ["a"] * 20 + ["b"] * 20
    assert 0 < got["p50_ms"] <= got["p99_ms"] and got["req_per_s"] > 0


def test_load_counts_non_200_answers_and_refused_connections(app_server):
    server, _ = app_server
    failing = asyncio.run(load(server.port, [b"{}"], 5, 1, 30, path="/v1/fail"))
    assert failing["requests"] == 5 and failing["errors"] == 5 and "no" in failing["error_samples"][0]
    refused = asyncio.run(load(free_port(), [b"{}"], 5, 2, 5))  # nothing listens there
    assert refused["requests"] == 0 and refused["errors"] == 2 and refused["p50_ms"] is None
