"""A hostile client against the real services, as a user runs them: ``persona serve --role all`` on 127.0.0.1.

Starts ``python -m cli.main serve --role all`` on two free loopback ports from the main job's ml-100k seed-0
SASRec (``runs/ml-100k/sasrec/seed0`` and the adapter beside it) with ``$PERSONA_API_KEY`` set (role all: the
device's operator key is the same key), its event log and prototype cache in a temporary directory and no access
log, then attacks it group by group (the trust model is docs/security.md):

1. auth — every device route × {no credential, wrong key, token signed with another key, expired token, another
   user's token}; every cloud route × {none, wrong key, a device user token};
2. host — every route of both services with ``Host: attacker.example`` (DNS rebinding), ``PUT /v1/cloud`` included;
3. per-user integrity — event ids per user, exact and changed re-sends, future timestamps, the ``exclude_seen``
   difference attack;
4. unknown-item flood — one user posts ``--flood-events`` events on distinct unknown item ids in batches of 1,000,
   then ranks with a 10,000-item unknown ``history``;
5. noisy neighbour — 8 users' ``/v1/rank`` latency alone, after the flood, and while the hostile user floods
   (events and long-history ranks together, then each kind alone), with how busy the server's CPU was;
6. bad text — lone UTF-16 surrogates (raw JSON ``"\\ud800"``) in embeddings input and in ids;
7. browser — CORS preflight from a foreign origin, framing and CSP of the page, ``/docs``, trailing-slash redirects;
8. idle connections — 1,100 idle TCP connections, then requests on new connections, then the head timeout.

Each group records its requests, the count of each HTTP status (0: no answer) and of 5xx (the goal: none), and
every answer that is not what docs/security.md says, with the exact request. Traffic goes to 127.0.0.1 only; every
loop is bounded in count and time. Results: ``reports/benchmarks/hostile.{json,md}``.

    python benchmarks/hostile.py [--checkpoint runs/ml-100k/sasrec/seed0] [--flood-events 200000]
                                 [--out reports/benchmarks/hostile]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import uvloop
from tqdm import tqdm

from serving import local_services
from serving.auth import Credentials
from serving.config import load_app_config
from serving.load_gen import percentile
from serving.local_services import free_ports, stop, wait_healthy

ROOT = Path(__file__).resolve().parents[1]

KEY = "hostile-bench-key"  # $PERSONA_API_KEY: the cloud's key and (role all) the device's operator key
OPERATOR = {"Authorization": f"Bearer {KEY}"}
ATTACKER_HOST = "attacker.example"
EVIL_ORIGIN = "https://evil.example"
VICTIM, HOSTILE = "victim", "hostile"
BATCH = 1000  # events per flood request (the API's maximum)
LONG_HISTORY = 10_000  # unknown ids in the hostile rank's `history` (the API's maximum)
LONG_RANKS = 20  # rank requests with that history in group 4
NEIGHBOURS = 8  # connections the normal users rank over
NEIGHBOUR_USERS = 200  # normal users, each with its own token, each well under serve.device.user_rate_per_s
NEIGHBOUR_HISTORY = 50  # catalogue items each normal user stores
NEIGHBOUR_REQUESTS = 2000  # normal rank requests per phase
FLOOD_CONNECTIONS = 2  # hostile connections per kind (events, long-history ranks) while the neighbours rank
FLOOD_POOL = 20  # distinct event batches the hostile user cycles through while the neighbours rank
FLOOD_MAX_REQUESTS = 100_000
PHASE_MAX_S = 120.0  # any closed-loop phase
FLOOD_MAX_S = 900.0  # group 4's batches
IDLE_CONNECTIONS = 1100
IDLE_HOLD_S = 12.0  # serve.http.header_timeout_s is 10 s
PROBES = 50  # requests of each kind on new connections while the idle ones are held
FOUR_XX = tuple(range(400, 500))
# docs/security.md: a well-formed event refused for the server's state (a timestamp past its clock + skew, the user's
# serve.device.max_unknown_items reached) is a 409 naming the field, nothing of the request stored (it was 422 before)
STATE_REFUSAL = 409
# a user token past serve.device.user_rate_per_s / serve.device.user_burst, refused before the body is read
RATE_REFUSAL = 429
CONN_ERRORS = (OSError, asyncio.IncompleteReadError, IndexError, ValueError)


# ---- the services --------------------------------------------------------------------------------------------


@dataclass
class Target:
    device: str  # http://127.0.0.1:<port>
    cloud: str
    port: int  # the device's port (raw connections)
    pid: int  # the serving process (device and cloud: role all runs both in one)
    items: list[str]  # catalogue item tokens (id 1...)


def serve_command(ckpt: Path, tmp: Path, port: int, cloud_port: int) -> list[str]:
    return local_services.serve_command("all", port, [f"serve.checkpoint={ckpt}",
                                                      f"serve.device.db_path={tmp / 'events.db'}",
                                                      f"serve.device.prototype_cache={tmp / 'prototypes.json'}"],
                                        cloud_port=cloud_port)  # fmt: skip


def start_services(cmd: list[str], log: Path) -> subprocess.Popen:
    """``persona serve --role all`` with only ``$PERSONA_API_KEY`` set (no separate operator key)."""
    env = {k: v for k, v in os.environ.items() if k != "PERSONA_OPERATOR_KEY"}
    return local_services.launch(cmd, log, {**env, "PERSONA_API_KEY": KEY})


def log_errors(log: Path) -> list[str]:
    """The server's error lines (JSON logs at level error or critical, and tracebacks)."""
    lines = log.read_text(errors="replace").splitlines()
    return [ln[:500] for ln in lines if '"level": "error"' in ln or '"level": "critical"' in ln or "Traceback" in ln]


# ---- counting ------------------------------------------------------------------------------------------------


class Tally:
    """Requests by HTTP status (0: no answer: the connection failed or closed)."""

    def __init__(self):
        self.statuses: Counter[int] = Counter()

    def add(self, status: int) -> None:
        self.statuses[status] += 1

    def merge(self, summary: dict) -> None:
        self.statuses.update({int(s): n for s, n in summary["statuses"].items()})

    def summary(self) -> dict:
        return {
            "requests": sum(self.statuses.values()),
            "statuses": {str(s): n for s, n in sorted(self.statuses.items())},
            "5xx": sum(n for s, n in self.statuses.items() if s >= 500),
        }


def latency_stats(ms: list[float]) -> dict:
    return {k: None if v is None else round(v, 3) for k, v in
            {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms, default=None)}.items()}


# ---- one request per case (groups 1-4, 6, 7) -------------------------------------------------------------------


@dataclass
class Case:
    name: str
    method: str
    url: str
    expect: tuple[int, ...]  # the statuses docs/security.md promises
    body: object = None  # sent as JSON
    raw: bytes | None = None  # sent as is (instead of body), Content-Type: application/json
    headers: dict = field(default_factory=dict)
    who: str = "no credential"  # the credential the headers carry, for the report
    check: Callable[[httpx.Response], str] | None = None  # "" when the answer is as documented, else what is not


def bearer(credential: str) -> dict:
    return {"Authorization": f"Bearer {credential}"}


def send(client: httpx.Client, case: Case) -> httpx.Response:
    if case.raw is not None:
        headers = {"Content-Type": "application/json", **case.headers}
        return client.request(case.method, case.url, content=case.raw, headers=headers)
    return client.request(case.method, case.url, json=case.body, headers=case.headers)


def expected_text(expect: tuple[int, ...]) -> str:
    return "4xx" if expect == FOUR_XX else "/".join(map(str, expect))


def describe(case: Case) -> str:
    """The exact request, credentials named rather than shown."""
    host = f", Host: {case.headers['Host']}" if "Host" in case.headers else ""
    origin = f", Origin: {case.headers['Origin']}" if "Origin" in case.headers else ""
    body = case.raw.decode() if case.raw is not None else (json.dumps(case.body) if case.body is not None else "")
    body = body if len(body) <= 160 else f"{body[:160]}… ({len(body)} bytes)"
    return f"{case.method} {urlsplit(case.url).path} [{case.who}{host}{origin}] {body}".strip()


def check_answer(case: Case, resp: httpx.Response) -> str:
    """What is not as documented in ``resp`` ("" when all is)."""
    if resp.status_code not in case.expect:
        return f"status {resp.status_code}, expected {expected_text(case.expect)}"
    try:
        return case.check(resp) if case.check is not None else ""
    except ValueError:
        return "the answer is not the documented JSON"


def judge(case: Case, resp: httpx.Response | None, ms: float, error: str = "") -> dict:
    """One row of the report; ``resp`` None: no answer (status 0), ``error`` says why."""
    problem = error or check_answer(case, resp)
    row = {"case": case.name, "request": describe(case), "expected": expected_text(case.expect),
           "status": resp.status_code if resp is not None else 0, "ok": not problem, "ms": round(ms, 3),
           "bytes": len(resp.content) if resp is not None else 0}
    return row | ({"problem": problem, "answer": resp.text[:300] if resp is not None else ""} if problem else {})


def run_cases(client: httpx.Client, cases: list[Case], desc: str, deadline: float | None = None) -> list[dict]:
    rows = []
    for case in tqdm(cases, desc=desc, unit="req", leave=False, disable=len(cases) < 100):
        if deadline is not None and time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        try:
            resp, error = send(client, case), ""
        except httpx.HTTPError as exc:
            resp, error = None, f"no answer: {exc!r}"
        rows.append(judge(case, resp, (time.perf_counter() - t0) * 1e3, error))
    return rows


def summarize(rows: list[dict], seconds: float) -> dict:
    tally = Tally()
    for r in rows:
        tally.add(r["status"])
    return {**tally.summary(), "seconds": round(seconds, 2), "unexpected": [r for r in rows if not r["ok"]]}


def case_group(client: httpx.Client, name: str, cases: list[Case]) -> dict:
    t0 = time.perf_counter()
    rows = run_cases(client, cases, name)
    return {**summarize(rows, time.perf_counter() - t0), "cases": rows}


# answer checks: "" when as documented


def www_authenticate(resp: httpx.Response) -> str:
    got = resp.headers.get("www-authenticate")
    return "" if got == "Bearer" else f"WWW-Authenticate is {got!r}, not 'Bearer'"


def names(text: str) -> Callable[[httpx.Response], str]:
    def check(resp: httpx.Response) -> str:
        message = resp.json().get("message", "")
        return "" if text in message else f"message does not name {text!r}: {message[:200]!r}"

    return check


def names_by_status(fields: dict[int, str]) -> Callable[[httpx.Response], str]:
    """The field the answer's message must name, by status (a 429 names the credential, a 409 the event's field)."""
    return lambda resp: names(fields[resp.status_code])(resp)


def field_equals(**wanted) -> Callable[[httpx.Response], str]:
    def check(resp: httpx.Response) -> str:
        got = {k: resp.json().get(k) for k in wanted}
        return "" if got == wanted else f"answer {got}, expected {wanted}"

    return check


def cloud_still_enabled(resp: httpx.Response) -> str:
    return "" if resp.json().get("cloud_enabled") is True else f"cloud_enabled is {resp.json().get('cloud_enabled')}"


def no_cors(resp: httpx.Response) -> str:
    got = resp.headers.get("access-control-allow-origin")
    return "" if got is None else f"Access-Control-Allow-Origin: {got}"


def no_location(resp: httpx.Response) -> str:
    got = resp.headers.get("location")
    return "" if got is None else f"redirects to {got}"


def api_headers(resp: httpx.Response) -> str:
    want = {"x-content-type-options": "nosniff", "cache-control": "no-store", "x-frame-options": "DENY"}
    bad = {k: resp.headers.get(k) for k, v in want.items() if resp.headers.get(k) != v}
    return no_cors(resp) or ("" if not bad else f"headers {bad}, expected {want}")


def page_cannot_be_framed(resp: httpx.Response) -> str:
    csp = resp.headers.get("content-security-policy", "")
    missing = [p for p in ("frame-ancestors 'none'", "script-src 'sha256-", "connect-src 'self'") if p not in csp]
    if resp.headers.get("x-frame-options") != "DENY" or missing or "unsafe-inline" in csp:
        return f"X-Frame-Options {resp.headers.get('x-frame-options')!r}, CSP {csp!r}"
    return ""


def at_most_100_unknown(resp: httpx.Response) -> str:
    n = len(resp.json().get("unknown_items", []))
    return "" if n <= 100 else f"{n} unknown items listed (at most 100 documented)"


# ---- routes --------------------------------------------------------------------------------------------------


def device_routes(item: str) -> list[tuple[str, str, object, int]]:
    """(method, path, body, status for another user's token) of every device route that needs a credential."""
    return [
        ("POST", "/v1/events", {"events": [{"event_id": "auth-0", "user_id": VICTIM, "item_id": item}]}, 403),
        ("POST", "/v1/rank", {"user_id": VICTIM, "k": 3}, 403),
        ("POST", "/v1/rank", {"history": [item], "k": 3}, 200),  # reads no stored data: any valid credential
        ("POST", "/v1/tokens", {"user_id": VICTIM}, 403),
        ("PUT", "/v1/cloud", {"enabled": False}, 403),
        ("GET", "/metrics", None, 403),
    ]


def route_name(method: str, path: str, body: object) -> str:
    """``POST /v1/rank`` with ``user_id`` and with a history only are two routes in docs/security.md."""
    if path == "/v1/rank" and isinstance(body, dict):
        return f"{method} {path} ({'user_id' if 'user_id' in body else 'history only'})"
    return f"{method} {path}"


def cloud_routes(item: str) -> list[tuple[str, str, object]]:
    return [
        ("POST", "/v1/edits", {"items": [item]}),
        ("GET", "/v1/prototypes", None),
        ("POST", "/v1/embeddings", {"input": "hi"}),
        ("POST", "/admin/reload", None),
        ("GET", "/metrics", None),
    ]


PUBLIC_DEVICE = [("GET", "/healthz", None), ("GET", "/openapi.json", None), ("GET", "/", None)]
PUBLIC_CLOUD = [("GET", "/healthz", None), ("GET", "/openapi.json", None)]


def user_token(client: httpx.Client, t: Target, user: str) -> dict:
    resp = client.post(f"{t.device}/v1/tokens", json={"user_id": user}, headers=OPERATOR)
    resp.raise_for_status()
    return bearer(resp.json()["token"])


# ---- group 1: auth -------------------------------------------------------------------------------------------


def auth_cases(client: httpx.Client, t: Target) -> list[Case]:
    other = user_token(client, t, "auth-other")
    invalid = {
        "no credential": {},
        "wrong key": bearer("wrong-key"),
        "token signed with another key": bearer(Credentials("another-operator-key").issue(VICTIM, 3600)[0]),
        "expired token": bearer(Credentials(KEY).issue(VICTIM, 60, now=time.time() - 3600)[0]),
    }
    cases = [Case(f"device {route_name(m, p, body)} · {who}", m, t.device + p, (401,), body, headers=h, who=who,
                  check=www_authenticate) for m, p, body, _ in device_routes(t.items[0]) for who, h in invalid.items()]
    cases += [Case(f"device {route_name(m, p, body)} · another user's token", m, t.device + p, (status,), body,
                   headers=other, who="another user's token") for m, p, body, status in device_routes(t.items[0])]
    cloud = {"no credential": {}, "wrong key": bearer("wrong-key"), "a device user token": other}
    cases += [Case(f"cloud {m} {p} · {who}", m, t.cloud + p, (401,), body, headers=h, who=who, check=www_authenticate)
              for m, p, body in cloud_routes(t.items[0]) for who, h in cloud.items()]
    return cases


# ---- group 2: host -------------------------------------------------------------------------------------------


def host_cases(t: Target) -> list[Case]:
    rebinding = {"Host": ATTACKER_HOST}
    device = [(m, p, b) for m, p, b, _ in device_routes(t.items[0])] + PUBLIC_DEVICE
    cases = [Case(f"device {route_name(m, p, b)}", m, t.device + p, (400,), b, headers={**OPERATOR, **rebinding},
                  who="operator key") for m, p, b in device]
    cases += [Case(f"cloud {m} {p}", m, t.cloud + p, (400,), b, headers={**OPERATOR, **rebinding}, who="API key")
              for m, p, b in cloud_routes(t.items[0]) + PUBLIC_CLOUD]
    cases.append(Case("afterwards: the device still calls its cloud", "GET", f"{t.device}/healthz", (200,),
                      check=cloud_still_enabled))
    return cases


# ---- group 3: per-user integrity ------------------------------------------------------------------------------


def one_event(user: str, item: str, event_id: str = "V-0", timestamp: float | None = None) -> dict:
    event = {"event_id": event_id, "user_id": user, "item_id": item}
    return {"events": [event | ({"timestamp": timestamp} if timestamp is not None else {})]}


def integrity_cases(client: httpx.Client, t: Target) -> list[Case]:
    victim, other = "integrity-victim", "integrity-other"
    mine, theirs = user_token(client, t, victim), user_token(client, t, other)
    a, b, events, rank = t.items[0], t.items[1], f"{t.device}/v1/events", f"{t.device}/v1/rank"

    def post(name, url, expect, body, headers, check=None):
        who = "the victim's token" if headers is mine else "another user's token"
        return Case(name, "POST", url, expect, body, headers=headers, who=who, check=check)

    return [
        post("another user posts the victim's event id first", events, (200,), one_event(other, a), theirs,
             field_equals(accepted=1, duplicates=0)),
        post("the victim posts its event with that id", events, (200,), one_event(victim, b), mine,
             field_equals(accepted=1, duplicates=0)),
        post("exact re-send", events, (200,), one_event(victim, b), mine, field_equals(accepted=0, duplicates=1)),
        post("changed re-send (another item)", events, (409,), one_event(victim, a), mine, names("V-0")),
        post("timestamp in 2200", events, (STATE_REFUSAL,), one_event(victim, a, "T-2200", 7_258_118_400.0), mine,
             names("events.0.timestamp")),
        post("timestamp an hour ahead", events, (STATE_REFUSAL,), one_event(victim, a, "T-hour", time.time() + 3600),
             mine, names("events.0.timestamp")),
        post("exclude_seen difference attack: exclude_seen false", rank, (403,),
             {"user_id": victim, "k": len(t.items), "exclude_seen": False}, theirs, names("user_id")),
        post("exclude_seen difference attack: exclude_seen true", rank, (403,),
             {"user_id": victim, "k": len(t.items)}, theirs, names("user_id")),
        post("the victim's history holds its one event", rank, (200,), {"user_id": victim, "k": 1}, mine,
             field_equals(history_length=1)),
    ]


# ---- group 4: unknown-item flood ------------------------------------------------------------------------------


def flood_body(start: int, n: int) -> bytes:
    """``n`` events of the hostile user, each on a distinct item id outside the catalogue."""
    ids = range(start, start + n)
    events = [{"event_id": f"flood-{i}", "user_id": HOSTILE, "item_id": f"unknown-{i}"} for i in ids]
    return json.dumps({"events": events}, separators=(",", ":")).encode()


def long_history_body() -> bytes:
    history = [f"long-{i}" for i in range(LONG_HISTORY)]
    return json.dumps({"user_id": HOSTILE, "k": 10, "history": history}, separators=(",", ":")).encode()


def flood_cases(t: Target, hostile: dict, n_events: int, cap: int) -> list[Case]:
    """Batches of distinct unknown ids: those within ``serve.device.max_unknown_items`` accepted, the rest refused
    whole."""
    cases = []
    for start in range(0, n_events, BATCH):
        n = min(BATCH, n_events - start)
        within = start + n <= cap
        refusal = names_by_status({STATE_REFUSAL: ".item_id", RATE_REFUSAL: "authorization"})
        check = field_equals(accepted=n, duplicates=0) if within else refusal
        cases.append(Case(f"events {start}-{start + n - 1}", "POST", f"{t.device}/v1/events",
                          (200,) if within else (STATE_REFUSAL, RATE_REFUSAL), raw=flood_body(start, n),
                          headers=hostile,
                          who="the hostile user's token", check=check))
    return cases


def long_rank_cases(t: Target, hostile: dict) -> list[Case]:
    body = long_history_body()
    return [Case(f"rank with a {LONG_HISTORY:,}-item unknown history", "POST", f"{t.device}/v1/rank",
                 (200, RATE_REFUSAL), raw=body, headers=hostile, who="the hostile user's token",
                 check=at_most_100_unknown)] * LONG_RANKS


def flood_group(client: httpx.Client, t: Target, hostile: dict, n_events: int, cap: int) -> dict:
    t0 = time.perf_counter()
    cases = flood_cases(t, hostile, n_events, cap)
    batches = run_cases(client, cases, "unknown-item flood", time.monotonic() + FLOOD_MAX_S)
    flood_s = time.perf_counter() - t0
    ranks = run_cases(client, long_rank_cases(t, hostile), "long-history ranks")
    accepted = sum(len(json.loads(c.raw)["events"]) for c, r in zip(cases, batches) if r["status"] == 200 and r["ok"])
    return {
        **summarize(batches + ranks, time.perf_counter() - t0),
        "flood_events": n_events, "batches_sent": len(batches), "flood_seconds": round(flood_s, 2),
        "max_unknown_items": cap, "events_accepted": accepted,
        "batches_by_status": dict(Counter(str(r["status"]) for r in batches)),
        "batch_latency": latency_stats([r["ms"] for r in batches]),
        "long_rank": {"history": LONG_HISTORY, "request_bytes": len(long_history_body()),
                      **latency_stats([r["ms"] for r in ranks]),
                      "bytes": max((r["bytes"] for r in ranks), default=0),
                      "statuses": dict(Counter(str(r["status"]) for r in ranks))},
    }


# ---- raw HTTP/1.1 connections (groups 5, 8) --------------------------------------------------------------------

Job = tuple[str, bytes, str]  # (path, JSON body, header lines each ending in CRLF) of a POST
REQUEST_TIMEOUT_S = 60.0


def header_lines(headers: dict) -> str:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items())


class Conn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1: a minimal client, so latencies are the server's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.closed_by_server = False  # the last answer said `Connection: close` (a 429 does)

    @classmethod
    async def open(cls, port: int) -> Conn:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> int:
        """Send one request and read its answer; the status (errors: :data:`CONN_ERRORS`)."""
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            self.writer.write(head + body)
            status = int((await self.reader.readline()).split(b" ", 2)[1])
            length = 0
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                    self.closed_by_server = True
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def closed_loop(port: int, jobs: list[Job], n: int, connections: int, stop: asyncio.Event | None) -> dict:
    """``connections`` keep-alive connections share ``n`` POSTs (jobs in turn) until done, ``stop`` or
    :data:`PHASE_MAX_S`; a failed connection counts as status 0 and is reopened."""
    tally, ms, issued = Tally(), [], 0
    deadline = time.monotonic() + PHASE_MAX_S

    async def worker() -> None:
        nonlocal issued
        conn = None
        while issued < n and time.monotonic() < deadline and not (stop and stop.is_set()):
            path, body, headers = jobs[issued % len(jobs)]
            issued += 1
            t0 = time.perf_counter()
            try:
                conn = conn or await Conn.open(port)
                status = await conn.request("POST", path, body, headers)
                if conn.closed_by_server:  # as any client does: a new connection for the next request
                    conn.close()
                    conn = None
            except CONN_ERRORS:
                status = 0
                if conn is not None:
                    conn.close()
                conn = None  # reopened for the next request
            ms.append((time.perf_counter() - t0) * 1e3)
            tally.add(status)
        if conn is not None:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    wall = time.perf_counter() - t0
    return {**tally.summary(), "connections": connections, "seconds": round(wall, 2),
            "req_per_s": round(sum(tally.statuses.values()) / wall, 1), **latency_stats(ms)}


# ---- group 5: noisy neighbour ---------------------------------------------------------------------------------


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cores_busy(before: float | None, after: float | None, wall: float) -> float | None:
    return None if before is None or after is None else round((after - before) / wall, 2)


def neighbour_jobs(client: httpx.Client, t: Target) -> list[Job]:
    """Normal users, each storing :data:`NEIGHBOUR_HISTORY` catalogue items with its own token; their rank jobs."""
    jobs = []
    for u in tqdm(range(NEIGHBOUR_USERS), desc="neighbours", leave=False):
        user = f"neighbour-{u}"
        token = user_token(client, t, user)
        items = t.items[u * NEIGHBOUR_HISTORY % len(t.items):][:NEIGHBOUR_HISTORY]
        events = [{"event_id": f"n{i}", "user_id": user, "item_id": item} for i, item in enumerate(items)]
        client.post(f"{t.device}/v1/events", json={"events": events}, headers=token).raise_for_status()
        jobs.append(("/v1/rank", json.dumps({"user_id": user, "k": 10}).encode(), header_lines(token)))
    return jobs


def hostile_jobs(hostile: dict, n_events: int) -> dict[str, list[Job]]:
    """The hostile user's two floods: event batches on new distinct unknown ids, and long-history ranks."""
    line = header_lines(hostile)
    events = [("/v1/events", flood_body(n_events + j * BATCH, BATCH), line) for j in range(FLOOD_POOL)]
    return {"hostile_events": events, "hostile_ranks": [("/v1/rank", long_history_body(), line)]}


async def neighbour_phase(port: int, normal: list[Job], hostile: dict[str, list[Job]]) -> dict:
    """The normal users' ranks, measured while the hostile floods (if any) run on their own connections."""
    stop = asyncio.Event()
    floods = {kind: asyncio.create_task(closed_loop(port, jobs, FLOOD_MAX_REQUESTS, FLOOD_CONNECTIONS, stop))
              for kind, jobs in hostile.items()}
    if floods:
        await asyncio.sleep(1.0)  # the flood is under way before the measurement starts
    out = {"loadavg_before": loadavg()}
    out["neighbours"] = await closed_loop(port, normal, NEIGHBOUR_REQUESTS, NEIGHBOURS, None)
    stop.set()
    for kind, task in floods.items():
        out[kind] = await task
    out["loadavg_after"] = loadavg()
    return out


def run_phase(name: str, t: Target, normal: list[Job], hostile: dict[str, list[Job]]) -> dict:
    """One phase, with how busy the server and this client were (CPU seconds per second: cores)."""
    t0, server0, client0 = time.perf_counter(), process_cpu_s(t.pid), time.process_time()
    phase = uvloop.run(neighbour_phase(t.port, normal, hostile))
    wall = time.perf_counter() - t0
    phase["seconds"] = round(wall, 2)
    phase["server_cores_busy"] = cores_busy(server0, process_cpu_s(t.pid), wall)
    phase["client_cores_busy"] = cores_busy(client0, time.process_time(), wall)
    n = phase["neighbours"]
    print(f"  neighbours {name}: p50 {n['p50_ms']} ms, p99 {n['p99_ms']} ms, {n['req_per_s']} req/s, "
          f"statuses {n['statuses']}", flush=True)
    return phase


def flooded_phases(t: Target, normal: list[Job], floods: dict[str, list[Job]]) -> dict[str, dict]:
    """After group 4 (the hostile user quiet, at its cap), then while it floods: both kinds, then each alone."""
    return {
        "after the flood": run_phase("after the flood (hostile user quiet)", t, normal, {}),
        "flooded": run_phase("while the hostile user floods", t, normal, floods),
        **{f"flooded ({kind.split('_')[1]} only)": run_phase(f"while it floods ({kind} only)", t, normal,
                                                              {kind: jobs}) for kind, jobs in floods.items()},
    }


EXPECTED_IN_PHASE = {"neighbours": (200,), "hostile_events": (STATE_REFUSAL, RATE_REFUSAL),
                     "hostile_ranks": (200, RATE_REFUSAL)}


def phase_unexpected(phase_name: str, phase: dict) -> list[dict]:
    rows = []
    for part, expect in EXPECTED_IN_PHASE.items():
        got = phase.get(part, {}).get("statuses", {})
        bad = {s: n for s, n in got.items() if int(s) not in expect}
        if bad:
            rows.append({"case": f"{phase_name}: {part}", "request": PART_REQUEST[part],
                         "expected": expected_text(expect), "status": bad, "ok": False,
                         "problem": f"{sum(bad.values())} answers not {expected_text(expect)}"})
    return rows


PART_REQUEST = {
    "neighbours": f"POST /v1/rank [own token] {{\"user_id\": \"neighbour-N\", \"k\": 10}} ({NEIGHBOUR_HISTORY} stored)",
    "hostile_events": f"POST /v1/events [hostile token] {BATCH} events on new distinct unknown item ids",
    "hostile_ranks": f"POST /v1/rank [hostile token] {{\"user_id\": \"hostile\", \"k\": 10, \"history\": "
                     f"<{LONG_HISTORY:,} unknown ids>}}",
}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def neighbour_group(phases: dict[str, dict]) -> dict:
    tally = Tally()
    for phase in phases.values():
        for part in EXPECTED_IN_PHASE:
            if part in phase:
                tally.merge(phase[part])
    alone = phases["alone"]["neighbours"]
    for ph in phases.values():
        ph["p50_vs_alone"] = ratio(ph["neighbours"]["p50_ms"], alone["p50_ms"])
    flooded = phases["flooded"]["neighbours"]
    return {
        **tally.summary(), "seconds": round(sum(ph["seconds"] for ph in phases.values()), 2),
        "unexpected": [row for name, ph in phases.items() for row in phase_unexpected(name, ph)],
        "phases": phases,
        "ratio_p50": ratio(flooded["p50_ms"], alone["p50_ms"]), "ratio_p99": ratio(flooded["p99_ms"], alone["p99_ms"]),
    }


# ---- group 6: bad text ----------------------------------------------------------------------------------------


def bad_text_cases(t: Target) -> list[Case]:
    """Lone UTF-16 surrogates as JSON escapes (valid JSON, not valid Unicode), sent as raw bytes."""
    s, item = '"\\ud800"', json.dumps(t.items[0])
    raw = [
        ("cloud", "/v1/embeddings", f'{{"input": {s}}}'),
        ("cloud", "/v1/embeddings", f'{{"input": ["ok", {s}]}}'),
        ("cloud", "/v1/edits", f'{{"items": [{s}]}}'),
        ("device", "/v1/rank", f'{{"user_id": {s}, "k": 5}}'),
        ("device", "/v1/rank", f'{{"history": [{s}], "k": 5}}'),
        ("device", "/v1/rank", f'{{"history": [{item}], "exclude": [{s}], "k": 5}}'),
        ("device", "/v1/events", f'{{"events": [{{"event_id": {s}, "user_id": "bad-text", "item_id": {item}}}]}}'),
        ("device", "/v1/events", f'{{"events": [{{"event_id": "b0", "user_id": {s}, "item_id": {item}}}]}}'),
        ("device", "/v1/events", f'{{"events": [{{"event_id": "b1", "user_id": "bad-text", "item_id": {s}}}]}}'),
        ("device", "/v1/tokens", f'{{"user_id": {s}}}'),
    ]
    url, who = {"device": t.device, "cloud": t.cloud}, {"device": "operator key", "cloud": "API key"}
    return [Case(f"{svc} POST {path} {body}", "POST", url[svc] + path, FOUR_XX, raw=body.encode(), headers=OPERATOR,
                 who=who[svc]) for svc, path, body in raw]


# ---- group 7: browser -----------------------------------------------------------------------------------------


def browser_cases(t: Target) -> list[Case]:
    preflight = {"Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    rank = {"history": [t.items[0]], "k": 3}
    local = {**OPERATOR, "Host": "localhost"}
    return [
        Case("device CORS preflight from a foreign origin", "OPTIONS", f"{t.device}/v1/rank", FOUR_XX,
             headers=preflight, check=no_cors),
        Case("cloud CORS preflight from a foreign origin", "OPTIONS", f"{t.cloud}/v1/edits", FOUR_XX,
             headers=preflight, check=no_cors),
        Case("a rank answer to a foreign origin", "POST", f"{t.device}/v1/rank", (200,), rank,
             headers={**OPERATOR, "Origin": EVIL_ORIGIN}, who="operator key", check=api_headers),
        Case("the demo page: no framing, CSP by hash", "GET", f"{t.device}/", (200,), check=page_cannot_be_framed),
        Case("device /docs is off", "GET", f"{t.device}/docs", (404,)),
        Case("cloud /docs is off", "GET", f"{t.cloud}/docs", (404,)),
        Case("device trailing slash: no redirect", "POST", f"{t.device}/v1/rank/", (404,), rank, headers=local,
             who="operator key", check=no_location),
        Case("cloud trailing slash: no redirect", "POST", f"{t.cloud}/v1/edits/", (404,), {"items": [t.items[0]]},
             headers=local, who="API key", check=no_location),
    ]


# ---- group 8: idle connections --------------------------------------------------------------------------------


def raise_own_nofile(wanted: int) -> int:
    """This script's soft descriptor limit, raised to ``wanted`` where the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def open_idle(port: int, n: int) -> tuple[list[socket.socket], int]:
    """``n`` TCP connections that never send a byte; (sockets, connections that failed to open)."""
    socks, failed = [], 0
    for _ in tqdm(range(n), desc="idle connections", unit="conn", leave=False):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            failed += 1
            continue
        s.setblocking(False)
        socks.append(s)
    return socks, failed


def connection_state(sock: socket.socket) -> str:
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return "open"
    except OSError:
        return "reset"
    return "closed" if data == b"" else "answered"


async def probe(port: int, method: str, path: str, body: bytes, headers: str) -> dict:
    """:data:`PROBES` requests, each on a new connection; latency includes the connect."""
    tally, ms = Tally(), []
    for _ in range(PROBES):
        t0 = time.perf_counter()
        try:
            conn = await Conn.open(port)
            try:
                status = await conn.request(method, path, body, headers)
            finally:
                conn.close()
        except CONN_ERRORS:
            status = 0
        ms.append((time.perf_counter() - t0) * 1e3)
        tally.add(status)
    return {**tally.summary(), **latency_stats(ms)}


async def probes(port: int, rank: Job) -> dict:
    return {"GET /healthz": await probe(port, "GET", "/healthz", b"", ""),
            "POST /v1/rank": await probe(port, "POST", *rank)}


def idle_group(t: Target, rank: Job) -> dict:
    t0 = time.perf_counter()
    nofile = raise_own_nofile(IDLE_CONNECTIONS + 256)
    socks, failed = open_idle(t.port, IDLE_CONNECTIONS)
    opened = time.monotonic()
    try:
        answers = uvloop.run(probes(t.port, rank))
        before = Counter(connection_state(s) for s in socks)
        before_s = time.monotonic() - opened
        time.sleep(max(0.0, opened + IDLE_HOLD_S - time.monotonic()))
        after = Counter(connection_state(s) for s in socks)
    finally:
        for s in socks:
            s.close()
    tally = Tally()
    for part in answers.values():
        tally.merge(part)
    unexpected = [{"case": f"{name} on a new connection", "request": name, "expected": "200", "status": p["statuses"],
                   "ok": False, "problem": "not every answer 200"} for name, p in answers.items()
                  if set(p["statuses"]) != {"200"}]
    if after.get("open", 0):
        unexpected.append({"case": "idle connections after the head timeout", "request": "TCP connect, send nothing",
                           "expected": "closed", "status": dict(after), "ok": False,
                           "problem": f"{after['open']} still open {IDLE_HOLD_S:g} s after opening"})
    return {**tally.summary(), "seconds": round(time.perf_counter() - t0, 2), "unexpected": unexpected,
            "client_nofile_soft_limit": nofile, "idle_opened": len(socks), "idle_failed_to_open": failed,
            "probes": answers, "idle_states_after_probes": dict(before), "probes_seconds": round(before_s, 2),
            "hold_s": IDLE_HOLD_S, "idle_states_after_hold": dict(after)}


# ---- reports -------------------------------------------------------------------------------------------------


def statuses_text(statuses: dict) -> str:
    return ", ".join(f"{s}×{n}" for s, n in statuses.items()) or "–"


def md_summary(groups: dict) -> list[str]:
    lines = ["| group | requests | statuses | 5xx | not as documented |", "|---|---|---|---|---|"]
    return lines + [f"| {name} | {g['requests']} | {statuses_text(g['statuses'])} | {g['5xx']} "
                    f"| {len(g['unexpected'])} |" for name, g in groups.items()]


def md_findings(groups: dict, meta: dict) -> list[str]:
    lines = [f"- **{name}** — {r['case']}: `{r['request']}` → {r['status']} (expected {r['expected']}): "
             f"{r.get('problem', '')}" + (f"; answer `{r['answer'][:200]}`" if r.get("answer") else "")
             for name, g in groups.items() for r in g["unexpected"][:10]]  # the JSON has them all
    lines += [f"- server log: `{line[:300]}`" for line in meta["server_log_errors"][:5]]
    return lines or ["None: every answer was the documented one, no 5xx, no error in the server's log."]


def md_cases(g: dict) -> list[str]:
    lines = ["| case | expected | status | as documented |", "|---|---|---|---|"]
    return lines + [f"| {r['case']} | {r['expected']} | {r['status']} "
                    f"| {'yes' if r['ok'] else '**no**: ' + r['problem']} |" for r in g["cases"]]


def md_flood(g: dict) -> list[str]:
    lat, rank = g["batch_latency"], g["long_rank"]
    return [
        f"{g['flood_events']:,} events of one user (its own token) on distinct item ids outside the catalogue, "
        f"{BATCH:,} per request: {g['batches_sent']} requests in {g['flood_seconds']} s, by status "
        f"{statuses_text(g['batches_by_status'])}; {g['events_accepted']:,} events accepted "
        f"(`serve.device.max_unknown_items` = {g['max_unknown_items']:,}); latency per request p50 {lat['p50_ms']} ms, "
        f"p99 {lat['p99_ms']} ms.",
        "",
        f"Then {LONG_RANKS} × `POST /v1/rank` with its `user_id` and a {rank['history']:,}-item unknown `history` "
        f"({rank['request_bytes']:,}-byte request): {statuses_text(rank['statuses'])}; answer {rank['bytes']:,} bytes; "
        f"latency p50 {rank['p50_ms']} ms, max {rank['max_ms']} ms.",
    ]


def phase_row(name: str, ph: dict) -> str:
    n = ph["neighbours"]
    hostile = [ph.get(k) for k in ("hostile_events", "hostile_ranks")]
    floods = " | ".join(f"{h['requests']} ({statuses_text(h['statuses'])})" if h else "–" for h in hostile)
    return (f"| {name} | {n['requests']} | {statuses_text(n['statuses'])} | {n['p50_ms']} | {n['p99_ms']} "
            f"| {ph['p50_vs_alone']}× | {n['req_per_s']} | {floods} | {ph['server_cores_busy']} "
            f"| {ph['client_cores_busy']} | {ph['loadavg_before']} → {ph['loadavg_after']} |")


def md_neighbour(g: dict) -> list[str]:
    return [
        f"{NEIGHBOUR_USERS} normal users ({NEIGHBOUR_HISTORY} catalogue items stored each, own tokens) rank by "
        f"`user_id` (k=10, seen items excluded) over {NEIGHBOURS} keep-alive connections, "
        f"{NEIGHBOUR_REQUESTS:,} requests per phase; the hostile user (group 4's, at its unknown-item cap) floods on "
        f"{FLOOD_CONNECTIONS} connections of "
        f"its own per kind: `/v1/events` batches of {BATCH:,} new distinct unknown ids, and `/v1/rank` with its "
        f"{LONG_HISTORY:,}-item unknown history.",
        "",
        "| phase | neighbour requests | statuses | p50 ms | p99 ms | p50 vs alone | req/s | hostile event batches "
        "| hostile ranks | server cores busy | client cores busy | load avg before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[phase_row(name, ph) for name, ph in g["phases"].items()],
        "",
        f"Neighbours' p50 flooded / alone: **{g['ratio_p50']}×** (goal ≤ 1.5×); p99: {g['ratio_p99']}×. Cores busy = "
        "CPU seconds per wall second of the serving process (device and cloud on one event loop: about 1 when it is "
        "saturated) and of this client.",
    ]


def md_idle(g: dict) -> list[str]:
    return [
        f"{g['idle_opened']:,} idle TCP connections to the device (none sends a byte; {g['idle_failed_to_open']} "
        f"failed to open; the client's soft RLIMIT_NOFILE {g['client_nofile_soft_limit']:,}); while they are held, "
        f"{PROBES} × each request on a new connection (latency includes the connect):",
        "",
        "| request | statuses | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *[f"| {name} | {statuses_text(p['statuses'])} | {p['p50_ms']} | {p['p99_ms']} |"
          for name, p in g["probes"].items()],
        "",
        f"Idle connections {g['probes_seconds']} s after opening: {g['idle_states_after_probes']}; {g['hold_s']:g} s "
        f"after opening: {g['idle_states_after_hold']} (`serve.http.header_timeout_s` = 10 s).",
    ]


RENDERERS = [("cases", md_cases), ("flood_events", md_flood), ("phases", md_neighbour), ("probes", md_idle)]


def md_group(name: str, g: dict) -> list[str]:
    render = next(fn for key, fn in RENDERERS if key in g)
    return [f"## {name}", "", *render(g), ""]


def md_preface(meta: dict) -> str:
    device, cloud = meta["health"]["device"], meta["health"]["cloud"]
    return (
        f"{meta['date']}; {meta['machine']}; load average at start {meta['loadavg_start']}, at end "
        f"{meta['loadavg_end']}; the run took {meta['seconds']} s. Served: `{meta['checkpoint']}` (its adapter "
        f"{'beside it' if meta['adapter'] else 'absent: base editor'}; {device['n_items']:,} items; cloud editor "
        f"`{cloud['version']}`, {cloud['prototypes']} prototypes) by one `persona serve --role all` process (device "
        "and cloud on one event loop, one torch thread), `$PERSONA_API_KEY` set (the device's operator key is the "
        "same key). The client is this script on the same machine, competing for the cores. Expected answers are "
        "those of [docs/security.md](../../docs/security.md); status 0 = no answer. Server alive at the end: "
        f"{meta['server_alive_at_end']}; error lines in its log: {len(meta['server_log_errors'])}."
    )


def write_reports(out: Path, meta: dict, groups: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "groups": groups}, indent=2) + "\n")
    lines = [
        "# Hostile client against the live services (`persona serve --role all`, loopback)", "", md_preface(meta), "",
        "## Summary", "", *md_summary(groups), "", "## Findings", "", *md_findings(groups, meta), "",
        *[line for name, g in groups.items() for line in md_group(name, g)],
        f"Command: `{meta['command']}`; services: `{meta['serve_command']}`.", "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))


# ---- the run --------------------------------------------------------------------------------------------------


def announce(name: str, group: dict) -> dict:
    print(f"[{name}] requests {group['requests']}, statuses {group['statuses']}, 5xx {group['5xx']}, "
          f"not as documented {len(group['unexpected'])} ({group['seconds']} s)", flush=True)
    for row in group["unexpected"]:
        print(f"    ! {row['case']}: {row['request']} → {row['status']} ({row.get('problem', '')})", flush=True)
    return group


def attack(t: Target, n_events: int, cap: int) -> dict:
    """Every group in turn; group 5's quiet phases run before and after group 4's flood, its flooded one after."""
    groups = {}
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        groups["1 auth"] = announce("1 auth", case_group(client, "auth", auth_cases(client, t)))
        groups["2 host"] = announce("2 host", case_group(client, "host", host_cases(t)))
        groups["3 per-user integrity"] = announce("3 per-user integrity",
                                                  case_group(client, "integrity", integrity_cases(client, t)))
        normal, hostile = neighbour_jobs(client, t), user_token(client, t, HOSTILE)
        uvloop.run(closed_loop(t.port, normal, 300, NEIGHBOURS, None))  # warm-up, not counted
        phases = {"alone": run_phase("alone", t, normal, {})}
        flood = flood_group(client, t, hostile, n_events, cap)
        groups["4 unknown-item flood"] = announce("4 unknown-item flood", flood)
        phases.update(flooded_phases(t, normal, hostile_jobs(hostile, n_events)))
        groups["5 noisy neighbour"] = announce("5 noisy neighbour", neighbour_group(phases))
        groups["6 bad text"] = announce("6 bad text", case_group(client, "bad text", bad_text_cases(t)))
        groups["7 browser"] = announce("7 browser", case_group(client, "browser", browser_cases(t)))
        operator_rank = ("/v1/rank", json.dumps({"history": t.items[:5], "k": 10}).encode(), header_lines(OPERATOR))
        groups["8 idle connections"] = announce("8 idle connections", idle_group(t, operator_rank))
    return groups


def run(ckpt: Path, n_events: int, meta: dict) -> dict:
    cap = load_app_config().serve.device.max_unknown_items
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        tmp, (port, cloud_port) = Path(tmp), free_ports(2)
        cmd, log = serve_command(ckpt, tmp, port, cloud_port), Path(tmp) / "server.log"
        shown = " ".join(cmd).replace(sys.executable, "python").replace(str(tmp), "<tmp>").replace(f"{ROOT}/", "")
        meta["serve_command"] = f"PERSONA_API_KEY=… {shown}"
        proc = start_services(cmd, log)
        try:
            t = Target(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{cloud_port}", port, proc.pid,
                       (ckpt / "items.txt").read_text().splitlines()[1:])
            for url in (t.device, t.cloud):
                wait_healthy(proc, url, log, "persona serve")
            meta["health"] = {"device": httpx.get(f"{t.device}/healthz").json(),
                              "cloud": httpx.get(f"{t.cloud}/healthz").json()}
            groups = attack(t, n_events, cap)
            meta["server_alive_at_end"] = proc.poll() is None
        finally:
            stop(proc)
        meta["server_log_errors"] = log_errors(log)
    meta["max_unknown_items"] = cap
    return groups


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "runs" / "ml-100k" / "sasrec" / "seed0"))
    parser.add_argument("--flood-events", type=int, default=200_000, help="group 4's events on distinct unknown ids")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks" / "hostile"),
                        help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    ckpt = Path(args.checkpoint).resolve()
    started = time.perf_counter()
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(["benchmarks/hostile.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()})",
        "loadavg_start": loadavg(),
        "checkpoint": relative(ckpt), "adapter": (ckpt / "adapter-main").is_dir(),
    }
    groups = run(ckpt, args.flood_events, meta)
    meta["loadavg_end"], meta["seconds"] = loadavg(), round(time.perf_counter() - started, 1)
    write_reports(Path(args.out), meta, groups)
    n_5xx = sum(g["5xx"] for g in groups.values())
    n_off = sum(len(g["unexpected"]) for g in groups.values())
    print(f"wrote {args.out}.{{json,md}} in {meta['seconds']} s; 5xx: {n_5xx}; not as documented: {n_off}")
    return 1 if n_5xx or not meta["server_alive_at_end"] else 0


if __name__ == "__main__":
    sys.exit(main())
