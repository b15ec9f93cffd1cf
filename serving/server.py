"""Run the services with uvicorn (httptools + uvloop): one role per process, or both (``role all``).

``workers > 1`` (role device or cloud) binds the socket once and starts that many spawned worker
processes, each building its own app from the config (no import strings); they share the port and,
for the device, the SQLite event log (WAL). Every worker scores with one torch thread. Every server
answers 408 and closes the connection when a request body is not complete ``serve.http.body_timeout_s`` after
its headers (:class:`BodyReadTimeout`), closes a connection with no complete request head
``serve.http.header_timeout_s`` after it opened or after its last response, an idle kept-alive one after
``serve.http.keepalive_timeout_s``, and connections beyond ``serve.http.max_connections`` at once
(:mod:`serving.http_protocol`), so idle or slow clients cannot use up its descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from urllib.parse import quote

import torch
import uvicorn
import uvloop
from fastapi import FastAPI

from serving.artifacts import load_artifacts, require_checkpoint
from serving.cloud_app import CloudService, create_cloud_app
from serving.config import AppConfig
from serving.device_app import DeviceService, create_device_app
from serving.embeddings_api import PATH as EMBEDDINGS_PATH
from serving.embeddings_api import APIError
from serving.engine import onnx_export_dir
from serving.http_protocol import HEADROOM_FDS, connection_cap, limited_protocol, raise_nofile_limit
from serving.metrics import MULTIPROC_ENV
from serving.serve_config import API_KEY_ENV, OPERATOR_KEY_ENV, HttpConfig, ServeConfig
from serving.web import BODY_TIMED_OUT, setup_json_logging

log = logging.getLogger(__name__)


def cloud_url_for(cfg: AppConfig) -> str | None:
    s = cfg.serve
    if s.device.cloud_url:
        return s.device.cloud_url
    return f"http://{s.host}:{s.cloud_port}" if s.role == "all" else None


def build_app(cfg: AppConfig, role: str, api_key: str | None) -> FastAPI:
    """The device or cloud app for ``cfg`` (loads the checkpoint)."""
    torch.set_num_threads(1)
    if role == "device":
        if not cfg.serve.operator_key:
            raise ValueError(f"the device needs an operator key: set ${OPERATOR_KEY_ENV} or serve.operator_key")
        service = DeviceService(cfg, load_artifacts(cfg), cloud_url_for(cfg), api_key)
        return create_device_app(service, cfg.serve.operator_key)
    if not api_key:
        raise ValueError(f"the cloud needs an API key: set ${API_KEY_ENV} or serve.api_key")
    return create_cloud_app(CloudService(cfg, require_checkpoint(cfg)), api_key)


class BodyReadTimeout:
    """Pure ASGI: a request body not complete ``timeout_s`` after its headers gets 408 and the connection closed,
    so a client that sends headers (and maybe part of the body) and then stalls holds nothing for long."""

    def __init__(self, app, timeout_s: float):
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        state = {"body_done": False, "timed_out": False, "started": False}

        async def timed_receive():
            if state["timed_out"]:
                return {"type": "http.disconnect"}
            if state["body_done"]:  # e.g. waiting for a disconnect while streaming: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                state["timed_out"] = True
                scope[BODY_TIMED_OUT] = True  # the app's request metrics count the 408 the client gets
                return {"type": "http.disconnect"}  # to the app, the client is gone
            state["body_done"] = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def guarded_send(message):
            if state["timed_out"] and not state["started"]:
                return  # the app's answer to the cut body is replaced by the 408
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not state["timed_out"]:
                raise
        if state["timed_out"] and not state["started"]:
            await self._send_408(scope, send)

    async def _send_408(self, scope, send) -> None:
        message = f"request body not received within {self.timeout_s:g} s"
        error = APIError(408, message) if scope["path"] == EMBEDDINGS_PATH else None
        body = json.dumps(error.body() if error else {"detail": message, "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 408, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def http_settings(app: FastAPI) -> HttpConfig:
    """The app's ``serve.http`` section (the defaults for an app without a service)."""
    service = getattr(app.state, "service", None)
    return service.s.http if service is not None else ServeConfig().http


def uvicorn_config(app: FastAPI, host: str, port: int, body_timeout_s: float | None = None) -> uvicorn.Config:
    """uvicorn on uvloop + httptools with the app's ``serve.http`` limits: bodies time out after ``body_timeout_s``
    (default: ``serve.http.body_timeout_s``), request heads after ``header_timeout_s``, idle kept-alive connections
    after ``keepalive_timeout_s``; connections beyond ``max_connections`` are closed at once.

    Every server is built here, so this is also where the process's descriptor limit is raised to fit the cap
    (:func:`serving.http_protocol.connection_cap`, which lowers the cap where the hard limit is too low)."""
    http = http_settings(app)
    if body_timeout_s is None:
        body_timeout_s = http.body_timeout_s
    protocol = limited_protocol(http.header_timeout_s, connection_cap(http.max_connections))
    return uvicorn.Config(
        BodyReadTimeout(app, body_timeout_s), host=host, port=port, loop="uvloop", http=protocol,
        timeout_keep_alive=http.keepalive_timeout_s, log_config=None, access_log=False, timeout_graceful_shutdown=5,
    )


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(cfg_json: str, role: str, api_key: str | None, sock: socket.socket) -> None:
    setup_json_logging()
    cfg = AppConfig.model_validate_json(cfg_json)
    app = build_app(cfg, role, api_key)
    settle()
    uvicorn.Server(uvicorn_config(app, cfg.serve.host, 0)).run(sockets=[sock])


def _supervise(cfg: AppConfig, role: str, api_key: str | None, port: int) -> int:
    sock = bind(cfg.serve.host, port)
    metrics_dir = tempfile.mkdtemp(prefix="persona-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the workers: /metrics sums all of them
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(cfg.model_dump_json(), role, api_key, sock), name=f"{role}-worker-{i}")
        for i in range(cfg.serve.workers)
    ]
    for p in procs:
        p.start()
    log.info("serving", extra={"role": role, "url": f"http://{cfg.serve.host}:{port}", "workers": len(procs)})

    def stop(signum, frame):
        for p in procs:
            if p.is_alive():
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return max([0] + [p.exitcode for p in procs if p.exitcode and p.exitcode > 0])


class _SharedSignalServer(uvicorn.Server):
    """A server that leaves signals to :func:`_serve_all`, which stops every server on one signal."""

    def capture_signals(self):
        return contextlib.nullcontext()


async def _serve_all(servers: list[uvicorn.Server]) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    tasks = []
    for server in servers:  # in order: the cloud listens before the device asks it for prototypes
        tasks.append(asyncio.create_task(server.serve()))
        while not server.started and not tasks[-1].done():
            await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)


def settle() -> None:
    """Once the apps are built: move everything loaded so far (model, catalogue, libraries) out of the garbage
    collector's reach, so a full collection under load walks only what requests allocate (measured with the hostile
    benchmark's event flood: full-collection pauses 145-390 ms before, 12-44 ms after)."""
    gc.collect()
    gc.freeze()


def with_keys(cfg: AppConfig) -> AppConfig:
    """``cfg`` with the keys resolved once for every worker: the cloud API key (role all: a random one if unset) and
    the device's operator key (its own, else role all's API key, else a random one; the CLI refused an open bind
    without it)."""
    s = cfg.serve
    api_key = s.resolved_api_key()
    if s.role == "all" and not api_key:
        api_key = secrets.token_urlsafe(16)
        log.warning(f"no ${API_KEY_ENV}: generated a cloud API key for this run", extra={"api_key": api_key})
    operator_key = s.device_operator_key() or (api_key if s.role == "all" else None)
    if s.role in ("device", "all") and not operator_key:
        operator_key = secrets.token_urlsafe(16)
        log.warning(f"no ${OPERATOR_KEY_ENV}: generated the device's operator key for this run (printed with the URL)")
    keys = s.model_copy(update={"api_key": api_key, "operator_key": operator_key})
    return cfg.model_copy(update={"serve": keys})


def serve(cfg: AppConfig) -> int:
    """Run ``cfg.serve.role`` until interrupted; returns the exit code."""
    cfg = with_keys(cfg)
    s = cfg.serve
    api_key = s.api_key
    if s.role in ("device", "all"):  # for people: the demo page, signed in with the operator key (docs/security.md)
        print(f"Persona demo page: http://{s.host}:{s.port}/#key={quote(s.operator_key)}  (Ctrl-C stops)",
              file=sys.stderr, flush=True)
    if s.role == "all":
        # two servers, one process: make room for both caps (connection_cap reserves for one server at a time)
        raise_nofile_limit(2 * s.http.max_connections + HEADROOM_FDS)
        cloud = build_app(cfg, "cloud", api_key)
        device = build_app(cfg, "device", api_key)
        settle()
        log.info("serving", extra={"device": f"http://{s.host}:{s.port}", "cloud": f"http://{s.host}:{s.cloud_port}"})
        servers = [_SharedSignalServer(uvicorn_config(cloud, s.host, s.cloud_port)),
                   _SharedSignalServer(uvicorn_config(device, s.host, s.port))]
        uvloop.run(_serve_all(servers))
        return 0
    port = s.port if s.role == "device" else s.cloud_port
    if s.role == "device" and s.device.runtime == "onnx":
        onnx_export_dir(cfg)  # once, before any worker loads it
    if s.workers > 1:
        return _supervise(cfg, s.role, api_key, port)
    app = build_app(cfg, s.role, api_key)
    settle()
    log.info("serving", extra={"role": s.role, "url": f"http://{s.host}:{port}"})
    uvicorn.Server(uvicorn_config(app, s.host, port)).run()
    return 0
