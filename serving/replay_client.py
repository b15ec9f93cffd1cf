"""The replay's client: test rows streamed through a live device service over HTTP, and what it served, scored.

:func:`replay` stores each user's history (``POST /v1/events``), then sends the rows in time order over ``lanes``
keep-alive connections (a user's rows stay in order on one lane): ``POST /v1/rank`` (k=10, nothing excluded, as
RecBole's full ranking), the target's rank in the answer (:func:`recipes.replay.served_rank`), then the target
posted as the user's next event. :func:`run_condition` does it against a fresh ``persona serve --role device``
(:mod:`serving.local_services`) whose cloud is reached through a :class:`~serving.link_emulator.Link`, and
scores it (:func:`condition_result`: :mod:`recsys.metrics` through :func:`recipes.replay.metrics_of`, the
adaptation shares, the device's edit requests and fallbacks from its ``/metrics``, bytes per edit, latency).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from recipes.replay import K, Rows, adaptation_shares, metrics_of, served_rank
from serving.link_emulator import Link
from serving.load_gen import ms, percentile
from serving.local_services import free_port, serve_command, start_service, stop
from serving.metrics import read_samples


@dataclass
class Outcome:
    """Per replayed row: the target's rank in what was served, the adaptation it was served with; latencies."""

    ranks: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    errors: int = 0


def lanes_of(rows: Rows, lanes: int) -> list[list[int]]:
    """The rows each lane sends, in order: users dealt round-robin in history order, a user's rows on one lane."""
    lane_of = {u: n % lanes for n, u in enumerate(rows.history)}
    return [[r for r in range(len(rows.user)) if lane_of[rows.user[r]] == n] for n in range(lanes)]


async def replay(port: int, rows: Rows, lanes: int, label: str, api_key: str) -> Outcome:
    """Replay ``rows`` through the device on ``127.0.0.1:port`` with its operator key ``api_key`` (it writes and
    ranks for every user)."""
    out = Outcome()
    ranks: list[int | None] = [None] * len(rows.user)
    kinds: list[str | None] = [None] * len(rows.user)
    limits = httpx.Limits(max_connections=lanes + 2, max_keepalive_connections=lanes + 2)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits,
                                 headers=headers) as client:  # fmt: skip
        for u, items in rows.history.items():  # history before the test period, in order (older timestamps)
            events = [{"event_id": f"{u}-h{i}", "user_id": u, "item_id": t, "timestamp": i + 1}
                      for i, t in enumerate(items)]  # fmt: skip
            (await client.post("/v1/events", json={"events": events})).raise_for_status()
        bar = tqdm(total=len(rows.user), desc=label, leave=False, mininterval=1.0)

        async def lane(queue: list[int]) -> None:
            for r in queue:
                u = rows.user[r]
                t0 = time.perf_counter()
                resp = await client.post("/v1/rank", json={"user_id": u, "k": K, "exclude_seen": False})
                out.latency.append(time.perf_counter() - t0)
                if resp.status_code != 200:
                    out.errors += 1
                    ranks[r], kinds[r] = K, "error"
                else:
                    body = resp.json()
                    ranks[r] = served_rank([it["item_id"] for it in body["items"]], rows.target[r])
                    kinds[r] = body["adaptation"]
                event = {"event_id": f"{u}-t{r}", "user_id": u, "item_id": rows.target[r], "timestamp": 1e9 + r}
                (await client.post("/v1/events", json={"events": [event]})).raise_for_status()
                bar.update()

        await asyncio.gather(*(lane(q) for q in lanes_of(rows, lanes)))
        bar.close()
    out.ranks, out.kinds = ranks, kinds
    return out


def device_metrics(port: int, api_key: str) -> dict[str, float]:
    """Edit requests by outcome (``edits:<outcome>``), fallbacks by reason (``fallback:<reason>``) and request-policy
    decisions (``ask:<decision>``) from the device's ``/metrics``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30, headers={"Authorization": f"Bearer {api_key}"})
    found: dict[str, float] = {}
    for name, labels, value in read_samples(text.text):
        if name == "persona_cloud_rtt_seconds_count" and labels.get("endpoint") == "edits":
            found[f"edits:{labels['outcome']}"] = found.get(f"edits:{labels['outcome']}", 0) + value
        elif name in ("persona_cloud_fallback_total", "persona_cloud_ask_total"):
            found[f"{name.split('_')[2]}:{next(iter(labels.values()))}"] = value
    return found


def condition_result(name: str, overrides: Sequence[str], outcome: Outcome, found: dict[str, float],
                     wire: dict[str, int], seconds: float) -> dict:  # fmt: skip
    """One condition's numbers: metrics over the rows, adaptation shares, edit requests per event, bytes per
    answered edit on the link (``wire``: bytes each way), rank latency p50 / p99, non-200 answers; ``ranks``
    per row (for :func:`recipes.replay.row_by_row`)."""
    n = len(outcome.ranks)
    edits = sum(v for k, v in found.items() if k.startswith("edits:"))
    edits_ok = found.get("edits:ok", 0.0)

    def by(prefix: str) -> dict[str, float]:
        return {k.split(":", 1)[1]: v for k, v in found.items() if k.startswith(f"{prefix}:")}

    return {
        "condition": name,
        "overrides": list(overrides),
        **metrics_of(outcome.ranks),
        "adaptation": adaptation_shares(outcome.kinds),
        "cloud_requests_per_event": round(edits / n, 4),
        "edit_requests": by("edits"),
        "fallbacks": by("fallback"),
        "policy": by("ask"),
        "downlink_bytes_per_edit": round(wire["down"] / edits_ok, 1) if edits_ok else None,
        "uplink_bytes_per_edit": round(wire["up"] / edits_ok, 1) if edits_ok else None,
        "p50_ms": ms(percentile(outcome.latency, 50), 2),
        "p99_ms": ms(percentile(outcome.latency, 99), 2),
        "non_200": outcome.errors,
        "rows": n,
        "seconds": round(seconds, 1),
        "ranks": outcome.ranks,
    }


def run_condition(name: str, overrides: Sequence[str], rows: Rows, lanes: int, api_key: str, log: Path,
                  device: Sequence[str], cloud_port: int | None,
                  link: tuple[float, float | None] | None = None) -> dict:  # fmt: skip
    """Start ``persona serve --role device`` with ``device`` (its checkpoint, files and keys), then the condition's
    ``overrides``, its cloud on ``cloud_port`` reached through a :class:`Link` (``link``: its one-way delay and bit
    rate; ``cloud_port`` None: a port nothing listens on, a dead cloud); replay ``rows`` on it, read its
    ``/metrics``, stop it: :func:`condition_result`."""

    async def go() -> tuple[Outcome, dict, dict]:
        relay = None if cloud_port is None else await Link(cloud_port, *(link or (0.0, None))).start()
        port = free_port()
        cloud_url = f"http://127.0.0.1:{relay.port if relay else free_port()}"
        cmd = serve_command("device", port, [*device, f"serve.device.cloud_url={cloud_url}", *overrides])
        proc = await asyncio.to_thread(start_service, cmd, port, log, "device")
        try:
            outcome = await replay(port, rows, lanes, name, api_key)
            found = await asyncio.to_thread(device_metrics, port, api_key)
        finally:
            await asyncio.to_thread(stop, proc)
            if relay:
                await relay.close()
        return outcome, found, dict(relay.bytes) if relay else {"up": 0, "down": 0}

    t0 = time.perf_counter()
    outcome, found, wire = asyncio.run(go())
    return condition_result(name, overrides, outcome, found, wire, time.perf_counter() - t0)
