"""serving.server: the body-read timeout (a pure ASGI layer, driven directly), the device's cloud URL, the keys
resolved once for every worker, the refusal to build an app without its key, and the uvicorn settings every server
gets from ``serve.http``."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from fastapi import FastAPI

from serving.config import load_app_config
from serving.http_protocol import LimitedHttpToolsProtocol
from serving.serve_config import API_KEY_ENV, OPERATOR_KEY_ENV, ServeConfig
from serving.server import BodyReadTimeout, bind, build_app, cloud_url_for, http_settings, uvicorn_config, with_keys
from serving.web import BODY_TIMED_OUT


def drive(app, path: str, messages: list[dict], timeout_s: float = 0.2) -> tuple[list[dict], dict, list[dict]]:
    """Run one request through ``BodyReadTimeout(app)``: the client sends ``messages`` then stalls. Returns what was
    sent back, the scope, and what the app received."""
    sent, seen = [], []
    scope = {"type": "http", "method": "POST", "path": path, "headers": []}

    async def main():
        queue = asyncio.Queue()
        for m in messages:
            queue.put_nowait(m)

        async def receive():
            return await queue.get()  # blocks after the messages: a stalled client

        async def send(message):
            sent.append(message)

        async def recording_app(scope, receive, send):
            async def rec():
                message = await receive()
                seen.append(message)
                return message

            await app(scope, rec, send)

        await BodyReadTimeout(recording_app, timeout_s)(scope, receive, send)

    asyncio.run(main())
    return sent, scope, seen


async def read_all_then_answer(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            status = 499  # what the app would answer to a cut body: replaced by the 408
            break
        if not message.get("more_body"):
            status = 200
            break
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})


def test_a_stalled_body_gets_408_and_close_and_the_app_sees_a_disconnect():
    part = {"type": "http.request", "body": b"{", "more_body": True}
    sent, scope, seen = drive(read_all_then_answer, "/v1/rank", [part])
    assert seen[-1] == {"type": "http.disconnect"} and scope[BODY_TIMED_OUT] is True
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["message"] == "request body not received within 0.2 s"
    assert len(sent) == 2  # the app's own answer never reached the client


def test_the_embeddings_route_gets_an_openai_shaped_408():
    part = {"type": "http.request", "body": b"", "more_body": True}
    sent, _, _ = drive(read_all_then_answer, "/v1/embeddings", [part])
    assert json.loads(sent[1]["body"])["error"]["message"].startswith("request body not received within")


def test_a_complete_body_is_untouched():
    sent, scope, _ = drive(read_all_then_answer, "/v1/rank", [{"type": "http.request", "body": b"{}"}])
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"done" and BODY_TIMED_OUT not in scope


def test_the_devices_cloud_is_its_own_url_else_this_process_in_role_all():
    assert cloud_url_for(load_app_config(overrides=["serve.device.cloud_url=http://cloud:9"])) == "http://cloud:9"
    cfg = load_app_config(overrides=["serve.role=all", "serve.host=127.0.0.2", "serve.cloud_port=8123"])
    assert cloud_url_for(cfg) == "http://127.0.0.2:8123"
    assert cloud_url_for(load_app_config(overrides=["serve.role=device"])) is None


@pytest.fixture()
def no_key_env(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(OPERATOR_KEY_ENV, raising=False)


def test_keys_are_resolved_once_for_every_worker(no_key_env, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="serving.server"):
        both = with_keys(load_app_config(overrides=["serve.role=all"])).serve
    assert both.api_key and both.operator_key == both.api_key  # role all: one generated key, one operator
    assert "generated a cloud API key" in caplog.text
    device = with_keys(load_app_config(overrides=["serve.role=device"])).serve
    assert device.api_key is None and len(device.operator_key) >= 16
    assert with_keys(load_app_config(overrides=["serve.role=cloud"])).serve.operator_key is None
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    kept = with_keys(load_app_config(overrides=["serve.role=all", "serve.operator_key=op"])).serve
    assert (kept.api_key, kept.operator_key) == ("from-env", "op")


def test_an_app_is_not_built_without_its_key(no_key_env):
    with pytest.raises(ValueError, match=f"the device needs an operator key: set \\${OPERATOR_KEY_ENV}"):
        build_app(load_app_config(overrides=["serve.role=device"]), "device", "k")
    with pytest.raises(ValueError, match=f"the cloud needs an API key: set \\${API_KEY_ENV}"):
        build_app(load_app_config(overrides=["serve.role=cloud"]), "cloud", None)


def test_uvicorn_gets_the_http_limits_of_the_apps_service():
    app = FastAPI()
    assert http_settings(app) == ServeConfig().http  # no service: the defaults
    s = ServeConfig.model_validate({"http": {"header_timeout_s": 3, "keepalive_timeout_s": 7, "max_connections": 64,
                                             "body_timeout_s": 2}})
    app.state.service = type("Service", (), {"s": s})()
    config = uvicorn_config(app, "127.0.0.1", 0)
    assert issubclass(config.http, LimitedHttpToolsProtocol)
    assert (config.http.header_timeout_s, config.http.max_connections) == (3, 64)
    assert config.timeout_keep_alive == 7 and config.loop == "uvloop" and not config.access_log
    assert isinstance(config.app, BodyReadTimeout) and config.app.timeout_s == 2
    assert uvicorn_config(app, "127.0.0.1", 0, body_timeout_s=9).app.timeout_s == 9


def test_bind_listens_and_the_socket_is_inherited_by_workers():
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.get_inheritable() and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        socket.create_connection(sock.getsockname(), timeout=5).close()
    finally:
        sock.close()
