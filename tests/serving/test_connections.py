"""Connection limits (``serve.http``: header_timeout_s, keepalive_timeout_s, max_connections) over real sockets on
127.0.0.1 against real uvicorn servers: idle and slow-header clients are closed, excess connections are refused at
once, and more than a thousand idle connections leave the API answering."""

from __future__ import annotations

import logging
import resource
import select
import socket
import subprocess
import sys
import time

import httpx
import pytest

from serving import http_protocol
from tests.conftest import free_ports
from tests.serving.conftest import API_KEY, device_and_cloud, serve_config, wait_for

AUTH = {"Authorization": f"Bearer {API_KEY}"}  # /v1/rank needs the operator key once auth is on; harmless before
HEADER_TIMEOUT_S = 1.0  # the strict servers
KEEPALIVE_TIMEOUT_S = 0.5  # the patient servers (their head timeout is long, so a close is the keep-alive one)
MARGIN_S = 3.0  # generous: the machine is shared and noisy; the bounds below are behaviour, not timing
N_IDLE = 1100  # more than the usual soft descriptor limit of 1,024, which the server's accept loop used to hit
CAP = 16


def ensure_descriptors(n: int) -> None:
    """This process holds both ends of every test connection: raise its soft descriptor limit to ``n`` or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= n:
        return
    if hard != resource.RLIM_INFINITY and hard < n:
        pytest.skip(f"needs {n} descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def connections(srv) -> int:
    """How many connections the server holds now (uvicorn's own count)."""
    return len(srv.server.server_state.connections)


@pytest.fixture(scope="module")
def strict(checkpoint, runtime, tmp_path_factory):
    with device_and_cloud(checkpoint, runtime, tmp_path_factory.mktemp("conn-strict"),
                          f"serve.http.header_timeout_s={HEADER_TIMEOUT_S}") as (device, cloud):
        yield {"device": device, "cloud": cloud}


@pytest.fixture(scope="module")
def patient(checkpoint, runtime, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conn-patient")
    with device_and_cloud(checkpoint, runtime, tmp, "serve.http.header_timeout_s=60",
                          f"serve.http.keepalive_timeout_s={KEEPALIVE_TIMEOUT_S}") as (device, cloud):
        yield {"device": device, "cloud": cloud}


@pytest.fixture(scope="module")
def capped(checkpoint, runtime, tmp_path_factory):
    with device_and_cloud(checkpoint, runtime, tmp_path_factory.mktemp("conn-capped"), "serve.http.header_timeout_s=60",
                          f"serve.http.max_connections={CAP}") as (device, _cloud):
        yield device


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def wait_closed(sock: socket.socket, within_s: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``within_s``; anything it sends is read and dropped."""
    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def get(sock: socket.socket, path: str = "/healthz") -> int:
    """One keep-alive ``GET`` on ``sock``; returns the status (the whole response is read, the connection stays)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode())
    return read_response(sock)


def read_response(sock: socket.socket) -> int:
    """Read one whole response (with a Content-Length) from ``sock`` and not a byte more; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    lines = data.decode().split("\r\n")
    length = next(int(v) for k, _, v in (ln.partition(": ") for ln in lines[1:]) if k.lower() == "content-length")
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk, "closed mid-body"
        body += chunk
    return int(lines[0].split()[1])


def open_sockets(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (nothing readable: no EOF, no reset)."""
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
    return len(socks) - len(poller.poll(0))


def fake_limits(monkeypatch, soft: int, hard: int) -> list:
    """Make :mod:`serving.http_protocol` see these descriptor limits; returns the setrlimit calls it makes.
    (These tests come before any live server of this module: none reads the fake limits.)"""
    calls = []
    state = {"soft": soft}
    monkeypatch.setattr(http_protocol.resource, "getrlimit", lambda _: (state["soft"], hard))

    def setrlimit(_, limits):
        calls.append(limits)
        state["soft"] = limits[0]

    monkeypatch.setattr(http_protocol.resource, "setrlimit", setrlimit)
    return calls


def test_the_cap_raises_the_soft_descriptor_limit_to_fit(monkeypatch):
    calls = fake_limits(monkeypatch, soft=1024, hard=65536)
    assert http_protocol.connection_cap(4096) == 4096
    assert calls == [(4096 + http_protocol.HEADROOM_FDS, 65536)]
    assert http_protocol.connection_cap(100) == 100  # never lowered


def test_a_hard_limit_too_low_lowers_the_cap_with_a_warning(monkeypatch, caplog):
    calls = fake_limits(monkeypatch, soft=256, hard=1024)
    with caplog.at_level(logging.WARNING, logger=http_protocol.__name__):
        cap = http_protocol.connection_cap(4096)
    assert calls == [(1024, 1024)]
    assert cap == 1024 - http_protocol.HEADROOM_FDS
    assert "lowering the cap" in caplog.text


def test_a_thousand_idle_connections_leave_the_api_answering(patient, capsys):
    device = patient["device"]
    ensure_descriptors(2 * N_IDLE + 1024)
    base = connections(device)
    idle = []
    try:
        deadline = time.monotonic() + 60
        while len(idle) < N_IDLE and time.monotonic() < deadline:
            idle.append(connect(device.port))
        assert len(idle) == N_IDLE
        wait_for(lambda: connections(device) >= base + N_IDLE, timeout=30)  # accepted, not just in the backlog

        with httpx.Client(timeout=30, headers=AUTH) as c:
            latencies = []
            for _ in range(20):
                t0 = time.perf_counter()
                r = c.get(f"{device.url}/healthz")
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            r = c.post(f"{device.url}/v1/rank", json={"history": ["50", "172"], "k": 3})
            assert r.status_code == 200, r.text
            assert len(r.json()["items"]) == 3
            assert c.get(f"{patient['cloud'].url}/healthz").status_code == 200
        assert open_sockets(idle) == N_IDLE  # the idle ones are still held: they were not dropped to make room
        with capsys.disabled():
            latencies.sort()
            print(f"\n{N_IDLE} idle connections open: /healthz median {latencies[10] * 1e3:.1f} ms, "
                  f"max {latencies[-1] * 1e3:.1f} ms")
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: connections(device) <= base + 5, timeout=30)


@pytest.mark.parametrize("service", ["device", "cloud"])
def test_a_connection_that_sends_nothing_is_closed(strict, service):
    srv = strict[service]
    with connect(srv.port) as s:
        t0 = time.monotonic()
        assert wait_closed(s, HEADER_TIMEOUT_S + MARGIN_S)
        assert time.monotonic() - t0 >= HEADER_TIMEOUT_S * 0.9  # by the head timeout, not at once


@pytest.mark.parametrize("service", ["device", "cloud"])
def test_a_slow_header_client_is_closed_while_it_keeps_sending(strict, service):
    srv = strict[service]
    with connect(srv.port) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
        sent, closed = 0, False
        while not closed and sent < 200 and time.monotonic() - t0 < HEADER_TIMEOUT_S + MARGIN_S:
            try:
                s.sendall(b"a")  # a byte every 0.1 s: always active, never a complete head
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = wait_closed(s, 0.1)
        elapsed = time.monotonic() - t0
    assert closed, f"still open after {elapsed:.1f} s and {sent} bytes"
    assert elapsed >= HEADER_TIMEOUT_S * 0.9
    assert sent >= 3  # it was sending when it was cut


def test_an_idle_kept_alive_connection_is_closed(patient):
    with connect(patient["device"].port) as s:
        assert get(s) == 200
        assert get(s) == 200  # kept alive between requests
        t0 = time.monotonic()
        # the head timeout is 60 s on this server: a close this soon is the keep-alive timeout
        assert wait_closed(s, KEEPALIVE_TIMEOUT_S + MARGIN_S)
        assert time.monotonic() - t0 >= KEEPALIVE_TIMEOUT_S * 0.9


def test_a_request_head_after_a_response_has_the_head_timeout(strict):
    """The head timer restarts after each response: a kept-alive client that later trickles a head is cut too."""
    with connect(strict["device"].port) as s:
        assert get(s) == 200
        s.sendall(b"GET /healthz HTTP/1.1\r\n")  # the keep-alive timer stops here; the head timer keeps going
        assert wait_closed(s, HEADER_TIMEOUT_S + MARGIN_S)


def test_pipelined_requests_are_all_answered(strict):
    """The head timer stops while a request is in flight and restarts only once no parsed request is waiting."""
    with connect(strict["device"].port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n" * 3)
        assert [read_response(s) for _ in range(3)] == [200, 200, 200]
        assert get(s) == 200


def test_connections_beyond_the_cap_are_closed_at_once(capped):
    base = connections(capped)
    assert base == 0, base
    within, beyond = [], []
    try:
        for _ in range(CAP):
            within.append(connect(capped.port))
        wait_for(lambda: connections(capped) == CAP, timeout=30)
        for _ in range(8):
            s = connect(capped.port)
            beyond.append(s)
            t0 = time.monotonic()
            assert wait_closed(s, MARGIN_S), "a connection beyond the cap was kept"
            assert time.monotonic() - t0 < MARGIN_S
        assert connections(capped) == CAP
        for s in within:  # the ones inside the cap are untouched and answer
            assert get(s) == 200
        within.pop().close()  # room for one more
        wait_for(lambda: connections(capped) < CAP, timeout=30)
        with connect(capped.port) as s:
            assert get(s) == 200
    finally:
        for s in within + beyond:
            s.close()


# `persona serve` in a child process started under the soft descriptor limit the issue was measured with
CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from serving.config import AppConfig
from serving.server import serve
sys.exit(serve(AppConfig.model_validate_json(sys.stdin.read())))
"""


def test_a_server_started_under_a_1024_descriptor_limit_holds_more_idle_connections(checkpoint, tmp_path):
    """Before, 1,100 idle connections made the accept loop fail (EMFILE) and /healthz with it; the server now
    raises its own soft limit to fit ``max_connections``."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096 + http_protocol.HEADROOM_FDS:
        pytest.skip(f"the hard descriptor limit ({hard}) is below the default cap plus headroom")
    ensure_descriptors(N_IDLE + 1024)
    (port,) = free_ports(1)
    cfg = serve_config(checkpoint, tmp_path, "serve.role=cloud", f"serve.cloud_port={port}",
                       "serve.http.header_timeout_s=60")
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "child.log", "wb") as log, \
            subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stderr=log) as child:
        idle = []
        try:
            child.stdin.write(cfg.model_dump_json().encode())
            child.stdin.close()
            wait_for(lambda: child.poll() is not None or healthy(url), timeout=120, interval=0.2)
            assert child.poll() is None, (tmp_path / "child.log").read_text()
            deadline = time.monotonic() + 60
            while len(idle) < N_IDLE and time.monotonic() < deadline:
                idle.append(connect(port))
            assert len(idle) == N_IDLE
            # queued behind the idle ones: an answer means the server accepted all of them
            with httpx.Client(timeout=15) as c:
                assert c.get(f"{url}/healthz").status_code == 200
            assert open_sockets(idle) == N_IDLE
        finally:
            for s in idle:
                s.close()
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
