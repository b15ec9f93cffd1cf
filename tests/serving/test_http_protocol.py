"""serving.http_protocol: the protocol class with its settings, the once-a-minute refusal warning, the connections of
every server in the process counted together, and a real uvicorn server on 127.0.0.1 (a minimal app) that closes
silent connections after the head timeout and connections beyond the cap at once."""

from __future__ import annotations

import gc
import logging
import resource
import socket
import threading
import time

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from serving import http_protocol
from serving.http_protocol import LimitedHttpToolsProtocol, limited_protocol, process_budget


def test_limited_protocol_is_a_subclass_with_the_settings_and_leaves_the_base_alone():
    cls = limited_protocol(0.5, 7)
    assert issubclass(cls, LimitedHttpToolsProtocol) and issubclass(cls, HttpToolsProtocol)
    assert (cls.header_timeout_s, cls.max_connections) == (0.5, 7)
    assert (LimitedHttpToolsProtocol.header_timeout_s, LimitedHttpToolsProtocol.max_connections) == (10.0, 4096)


def test_refused_connections_are_warned_about_once_per_interval(caplog, monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(http_protocol.time, "monotonic", lambda: clock["now"])
    refusals = http_protocol._RefusalLog()
    with caplog.at_level(logging.WARNING, logger="serving.http_protocol"):
        for _ in range(5):
            refusals.note(cap=2, open_now=3)
        clock["now"] += 61
        refusals.note(cap=2, open_now=3)
    warned = [r for r in caplog.records if "connection cap reached" in r.getMessage()]
    assert [r.refused for r in warned] == [1, 5]  # the first at once, then the four since and this one


def test_every_servers_connections_count_for_the_process():
    shared = http_protocol._ProcessConnections()
    a, b = ServerState(), ServerState()  # uvicorn's, one per server: its ``connections`` set
    a.connections |= {object(), object()}
    b.connections.add(object())
    shared.register(a)
    shared.register(a)
    shared.register(b)
    assert shared.count() == 3
    b.connections.add(object())
    assert shared.count() == 4
    del b
    gc.collect()
    assert shared.count() == 2  # a stopped server's state is forgotten


def test_the_process_budget_keeps_headroom_under_the_soft_limit():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        assert process_budget() is None
    else:
        assert process_budget() == soft - min(http_protocol.HEADROOM_FDS, soft // 4)


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture()
def server():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(hello, loop="uvloop", http=limited_protocol(0.3, 2), log_config=None, access_log=False,
                            lifespan="off", timeout_keep_alive=30)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    yield sock.getsockname()[1]
    srv.should_exit = True
    thread.join(10)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_silent_connection_is_closed_after_the_head_timeout_and_one_past_the_cap_at_once(server):
    first = socket.create_connection(("127.0.0.1", server))
    second = socket.create_connection(("127.0.0.1", server))
    time.sleep(0.05)
    third = socket.create_connection(("127.0.0.1", server))
    assert closed_within(third, 0.2)  # over the cap of 2
    t0 = time.monotonic()
    assert closed_within(first, 3) and closed_within(second, 3)  # sent nothing: closed after 0.3 s, not 30
    assert 0.2 < time.monotonic() - t0 < 2.5
    for s in (first, second, third):
        s.close()


def test_an_answered_connection_gets_the_head_timeout_again(server):
    sock = socket.create_connection(("127.0.0.1", server))
    sock.sendall(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    sock.settimeout(3)
    data = b""
    while not data.endswith(b"ok"):
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 200")
    assert closed_within(sock, 3)  # kept alive, but idle past the head timeout (0.3 s) long before keep-alive's 30 s
    sock.close()
