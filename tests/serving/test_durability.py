"""Nothing acknowledged is lost: SIGKILL the device service during a burst of event writes, restart it, check.

Also the ``persona serve`` command line: a missing checkpoint or API key is a one-line error.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import ROOT, free_port, free_ports
from tests.serving.conftest import API_KEY, AUTH, wait_for


def start_device(checkpoint, tmp_path, port: int) -> subprocess.Popen:
    ckpt, workdir = checkpoint
    cmd = [
        sys.executable, "-m", "cli.main", "serve", "--role", "device", "--port", str(port),
        f"serve.checkpoint={ckpt}", f"data.workdir={workdir}", f"serve.device.db_path={tmp_path / 'events.db'}",
        f"serve.device.prototype_cache={tmp_path / 'prototypes.json'}", "serve.http.access_log=false",
        f"serve.operator_key={API_KEY}",
    ]
    log = open(tmp_path / f"device-{port}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})

    def up():
        assert proc.poll() is None, (tmp_path / log.name).read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=90, interval=0.1)
    return proc


def test_sigkill_during_a_burst_loses_no_acknowledged_event(checkpoint, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_device(checkpoint, tmp_path, port)
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        with httpx.Client(timeout=5, headers=AUTH) as c:
            for batch in range(10_000):
                if stop.is_set():
                    return
                events = [
                    {"event_id": f"w{w}-b{batch}-{i}", "user_id": f"user{w}", "item_id": str(1 + (batch + i) % 500)}
                    for i in range(10)
                ]
                try:
                    resp = c.post(f"{url}/v1/events", json={"events": events})
                except httpx.HTTPError:
                    return  # the server is gone: this batch was never acknowledged
                assert resp.status_code == 200, resp.text
                with lock:
                    acked.extend(e["event_id"] for e in events)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) >= 300, timeout=60, interval=0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-burst: the writers are still sending
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        n_acked = len(acked)

        proc = start_device(checkpoint, tmp_path, port)
        with sqlite3.connect(tmp_path / "events.db") as db:
            stored = {r[0] for r in db.execute("SELECT event_id FROM events")}
        missing = set(acked) - stored
        assert not missing, f"{len(missing)} of {n_acked} acknowledged events lost, e.g. {sorted(missing)[:5]}"

        # the restarted service serves from the recovered log and keeps appending
        user0 = sum(1 for e in stored if e.startswith("w0-"))
        r = httpx.post(f"{url}/v1/rank", json={"user_id": "user0", "k": 5, "exclude_seen": False}, timeout=10,
                       headers=AUTH).json()
        assert r["history_length"] == user0 >= 1
        more = [{"event_id": "after-restart", "user_id": "user0", "item_id": "7"}]
        assert httpx.post(f"{url}/v1/events", json={"events": more}, timeout=10, headers=AUTH).json()["accepted"] == 1
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def persona(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PERSONA_API_KEY"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("role", ["device", "all"])
def test_serve_without_a_trained_model_says_run_make_run(tmp_path, role):
    proc = persona("serve", "--role", role, f"serve.checkpoint={tmp_path / 'none'}")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("persona serve")]
    assert len(lines) == 1 and "run `make run` first" in lines[0], proc.stderr


def test_cloud_without_api_key_is_refused(tmp_path):
    proc = persona("serve", "--role", "cloud", f"serve.checkpoint={tmp_path}")
    assert proc.returncode == 2 and "PERSONA_API_KEY" in proc.stderr, proc.stderr


def test_role_all_serves_device_and_cloud_in_one_process(checkpoint, tmp_path):
    """What ``make serve`` runs: both services in one process; the device reaches its cloud; SIGTERM stops both."""
    ckpt, workdir = checkpoint
    port, cloud_port = free_ports(2)
    cmd = [
        sys.executable, "-m", "cli.main", "serve", "--role", "all", "--port", str(port), "--cloud-port",
        str(cloud_port), f"serve.checkpoint={ckpt}", f"data.workdir={workdir}",
        f"serve.device.db_path={tmp_path / 'e.db'}", f"serve.device.prototype_cache={tmp_path / 'p.json'}",
        "serve.api_key=k", f"output_dir={tmp_path / 'runs'}",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    device, cloud = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{cloud_port}"
    try:
        def up():
            assert proc.poll() is None, proc.stdout.read()[-3000:]  # died at start-up: show why
            try:
                return httpx.get(f"{device}/healthz", timeout=1).json()["cloud_available"] is True
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=90, interval=0.1)
        version = httpx.get(f"{cloud}/healthz").json()["version"]
        role_all = {"Authorization": "Bearer k"}  # role all: the device's operator key is the cloud's API key
        body = httpx.post(f"{device}/v1/rank", json={"history": ["50", "172"], "k": 3}, timeout=10, headers=role_all)
        body = body.json()
        # today's editor (BaseEditor) answers "no edit": the cloud was asked, and its version is reported
        assert body["version"] == version and len(body["items"]) == 3
        assert httpx.get(f"{cloud}/v1/prototypes", headers={"X-API-Key": "k"}).json()["version"] == version
        assert 'endpoint="edits",outcome="ok"' in httpx.get(f"{device}/metrics", headers=role_all).text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    logs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(rec.get("msg") == "request" and rec.get("path") == "/v1/rank" for rec in logs)  # JSON access log


def test_two_workers_share_port_event_log_and_metrics(checkpoint, tmp_path):
    ckpt, workdir = checkpoint
    port = free_port()
    cmd = [
        sys.executable, "-m", "cli.main", "serve", "--role", "device", "--workers", "2", "--port", str(port),
        f"serve.checkpoint={ckpt}", f"data.workdir={workdir}", f"serve.device.db_path={tmp_path / 'e.db'}",
        f"serve.device.prototype_cache={tmp_path / 'p.json'}", "serve.http.access_log=false",
        f"serve.operator_key={API_KEY}",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert proc.poll() is None, proc.stdout.read()[-3000:]  # died at start-up: show why
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=120, interval=0.1)
        events = [{"event_id": f"e{i}", "user_id": "w", "item_id": str(1 + i)} for i in range(5)]
        with httpx.Client(timeout=10, headers=AUTH) as c:
            for i in range(5):  # separate requests: may land on either worker
                assert c.post(f"{url}/v1/events", json={"events": events[i : i + 1]}).status_code == 200
            lengths = set()
            for _ in range(30):  # new connections spread over both workers; each sees every event
                with httpx.Client(timeout=10, headers=AUTH) as fresh:
                    lengths.add(fresh.post(f"{url}/v1/rank", json={"user_id": "w", "k": 3}).json()["history_length"])
            assert lengths == {5}
            text = c.get(f"{url}/metrics").text
        line = next(ln for ln in text.splitlines() if ln.startswith("persona_requests_total") and "/v1/rank" in ln)
        assert float(line.rsplit(" ", 1)[1]) == 30  # summed over the workers
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
