"""Services as processes on 127.0.0.1 (serving.local_services): the `persona` command it runs is the installed
one, a process counts as started once /healthz answers, one that dies or never answers is an error naming its log,
and a real `persona serve --role device` starts and stops cleanly."""

from __future__ import annotations

import signal
import socket
import sys

import httpx
import pytest

from serving.local_services import (
    PERSONA,
    ROOT,
    free_port,
    free_ports,
    serve_command,
    start_service,
    stop,
)
from tests.serving.conftest import API_KEY, AUTH

HEALTHY = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
print("listening", file=sys.stderr, flush=True)
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_persona_is_the_console_script_of_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["persona"].partition(":")
    assert PERSONA == [sys.executable, "-m", module] and func == "main"


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for port in [*ports, free_port()]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_serve_command_per_role():
    assert serve_command("device", 8000, ["a=1"], workers=2) == [
        *PERSONA, "serve", "--role", "device", "--port", "8000", "--workers", "2", "serve.http.access_log=false", "a=1"]
    assert serve_command("cloud", 8001)[len(PERSONA):] == ["serve", "--role", "cloud", "--cloud-port", "8001",
                                                           "serve.http.access_log=false"]  # fmt: skip
    assert serve_command("all", 8000, cloud_port=8001)[len(PERSONA) + 3 :] == [
        "--port", "8000", "--cloud-port", "8001", "serve.http.access_log=false"]  # fmt: skip


def test_a_service_is_started_once_it_answers_and_stopped(tmp_path):
    port = free_port()
    proc = start_service([sys.executable, "-c", HEALTHY, str(port)], port, tmp_path / "h.log", "healthy")
    try:
        assert proc.poll() is None
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        assert "listening" in (tmp_path / "h.log").read_text()
    finally:
        stop(proc)
    assert proc.returncode is not None


def test_a_service_that_exits_or_never_answers_is_an_error_with_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        start_service([sys.executable, "-c", "import sys; sys.exit('boom')"], free_port(), tmp_path / "x.log", "x")
    mute = free_port()  # listening on another port: never healthy on this one
    with pytest.raises(RuntimeError, match="did not answer"):
        start_service([sys.executable, "-c", HEALTHY, str(free_port())], mute, tmp_path / "m.log", "mute", timeout_s=2)


def test_persona_serve_starts_and_stops(checkpoint, tmp_path):
    ckpt, workdir = checkpoint
    port = free_port()
    cmd = serve_command("device", port, [f"serve.checkpoint={ckpt}", f"data.workdir={workdir}",
                                         f"serve.device.db_path={tmp_path / 'events.db'}",
                                         f"serve.device.prototype_cache={tmp_path / 'prototypes.json'}",
                                         f"serve.operator_key={API_KEY}"])  # fmt: skip
    proc = start_service(cmd, port, tmp_path / "device.log", "device")
    try:
        resp = httpx.post(f"http://127.0.0.1:{port}/v1/rank", json={"history": ["50"], "k": 3}, headers=AUTH)
        assert resp.status_code == 200 and len(resp.json()["items"]) == 3
    finally:
        stop(proc)
    assert proc.returncode in (0, -signal.SIGTERM)  # ended by SIGTERM (uvicorn re-raises it after its shutdown)
