"""Half-open request bodies (headers with Content-Length, then silence) get 408 and a closed connection
from both services, over real uvicorn servers on 127.0.0.1 with ``serve.http.body_timeout_s`` set small."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.serving.conftest import API_KEY, AUTH, device_and_cloud


@pytest.fixture(scope="module")
def servers(checkpoint, runtime, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("body-timeout")
    with device_and_cloud(checkpoint, runtime, tmp, "serve.http.body_timeout_s=0.3") as (device, cloud):
        yield {"device": device, "cloud": cloud}


def half_open(port: int, path: str, n: int = 1) -> list[tuple[bytes, bool]]:
    """Open ``n`` connections that send headers and part of a body; return (what came back, closed?) of each."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)  # generous: no timing asserts
        s.sendall(f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                  f"x-api-key: {API_KEY}\r\ncontent-length: 100\r\n\r\n{{\"user_id\": ".encode())
        socks.append(s)
    out = []
    for s in socks:
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
            closed = True  # recv returned b"": the server closed the connection
        except TimeoutError:
            closed = False
        finally:
            s.close()
        out.append((data, closed))
    return out


@pytest.mark.parametrize(("service", "path"), [("device", "/v1/rank"), ("device", "/v1/events"),
                                               ("cloud", "/v1/edits"), ("cloud", "/v1/embeddings")])
def test_half_open_body_gets_408_and_close(servers, service, path):
    srv = servers[service]
    for data, closed in half_open(srv.port, path, n=3):
        assert closed, data
        assert data.startswith(b"HTTP/1.1 408 "), data
        body = json.loads(data.split(b"\r\n\r\n", 1)[1])
        if path == "/v1/embeddings":
            assert "within 0.3 s" in body["error"]["message"]  # OpenAI's error shape there
        else:
            assert "within 0.3 s" in body["message"]
    # the service's request metrics count what the client got (408), not the app's answer to the cut body
    with httpx.Client(timeout=30, headers={"x-api-key": API_KEY}) as c:
        text = c.get(f"{srv.url}/metrics").text
    lines = [ln for ln in text.splitlines() if ln.startswith("persona_requests_total") and f'route="{path}"' in ln]
    assert any('status="408"' in ln for ln in lines), lines
    assert not any('status="400"' in ln or 'status="422"' in ln for ln in lines), lines


def test_complete_bodies_and_keep_alive_are_unaffected(servers):
    with httpx.Client(timeout=30, headers=AUTH) as c:
        for _ in range(3):  # one kept-alive connection, idle between requests longer than the body timeout
            r = c.post(f"{servers['device'].url}/v1/rank", json={"history": ["50"], "k": 3})
            assert r.status_code == 200, r.text
            time.sleep(0.5)  # the deadline is per request, not per connection
        assert c.get(f"{servers['cloud'].url}/healthz").status_code == 200
