"""The services as separate processes on 127.0.0.1, for measuring them as a user runs them (the benchmarks).

``persona serve`` is started as a subprocess (:data:`PERSONA`: the console script's module, run by this
interpreter, so a checkout needs no reinstall), its stderr to a log file, one OpenMP thread pool that does not
spin; :func:`start_service` returns once ``GET /healthz`` answers 200 and :func:`stop` ends it with SIGTERM
(SIGKILL after 30 s).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

PERSONA = [sys.executable, "-m", "cli.main"]  # pyproject's [project.scripts] `persona` (a test checks they agree)
ROOT = Path(__file__).resolve().parents[1]  # where `-m cli.main` resolves (a checkout, or site-packages)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open while chosen, so they cannot repeat)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def serve_command(role: str, port: int, overrides: Sequence[str] = (), *, cloud_port: int | None = None,
                  workers: int | None = None) -> list[str]:  # fmt: skip
    """``persona serve --role ROLE`` on ``port`` (the cloud's port for role cloud; role all: the device's, with
    ``cloud_port``), no access log, then ``overrides`` (``key=value``)."""
    cmd = [*PERSONA, "serve", "--role", role, "--cloud-port" if role == "cloud" else "--port", str(port)]
    if cloud_port is not None:
        cmd += ["--cloud-port", str(cloud_port)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    return [*cmd, "serve.http.access_log=false", *overrides]


def launch(cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in :data:`ROOT` (stdout dropped, stderr to ``log``) with ``env`` (default: this process's)
    and a passive OpenMP wait policy; it does not wait for anything."""
    env = {**(os.environ if env is None else env), "OMP_WAIT_POLICY": "PASSIVE"}
    with open(log, "w") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(list(cmd), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env)


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, name: str = "service", timeout_s: float = 180.0) -> None:
    """Wait until ``url/healthz`` answers 200; ``RuntimeError`` (with the log's tail) when ``proc`` exits first
    or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}): {Path(log).read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer {url}/healthz within {timeout_s:g} s")


def start_service(cmd: Sequence[str], port: int, log: Path, name: str = "service",
                  env: Mapping[str, str] | None = None, timeout_s: float = 180.0) -> subprocess.Popen:  # fmt: skip
    """:func:`launch` ``cmd`` and wait until it answers on ``127.0.0.1:port`` (killed when it does not)."""
    proc = launch(cmd, log, env)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}", log, name, timeout_s)
    except RuntimeError:
        proc.kill()
        proc.wait(timeout=30)
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (a graceful shutdown), SIGKILL when it has not ended 30 s later."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
