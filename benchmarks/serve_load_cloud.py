"""Loopback load benchmark of the cloud service's ``POST /v1/edits``: 1 vs N uvicorn workers, batch-1 vs batched,
per edit source (``serve.cloud.edit_source``: ``adapter``, the adapter + prototype bank; ``distilled``, the teacher's
distilled edit: one teacher pass and one batched solve per batch).

The cloud role holds no per-request state (every worker loads the same read-only adapter + prototype
bank), so replicas behind any load balancer answer identically; here the replicas are uvicorn worker
processes sharing one port. Each worker answers concurrent requests in shared forward passes
(``serve.cloud.max_batch``; 1 = one forward pass per request, as before :mod:`serving.edit_batcher`). For each
worker count × ``serve.cloud.max_batch``: start ``persona serve --role cloud --workers N`` on 127.0.0.1 (one
torch thread per worker), warm every worker up, then send a bounded number of edit requests (200 real
ml-100k-style histories of 20 item ids) from the asyncio keep-alive client :func:`serving.load_gen.load` with
``--concurrency`` connections. Prints requests/s, p50/p99, errors, the mean requests per forward pass
(the cloud's ``persona_edit_batch_size``) and the throughput ratio against the first row; writes
``reports/benchmarks/serve_load_cloud.{json,md}``.

Needs the main job's artifacts (``make run``: ``runs/<dataset>/sasrec/seed0`` with ``adapter-main``, and the
other checkpoints the distilled edit's default teacher is made of). ``ms / edit`` is the cloud's time per answered
edit at that concurrency (1000 / req/s: the batch's compute shared by its requests).

    python benchmarks/serve_load_cloud.py [--workers 1,2] [--max-batch 1,64] [--requests 3000] [--concurrency 8]
                                          [--sources adapter] [--name serve_load_cloud]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import torch
import uvloop

from recsys import run_layout
from serving.load_gen import load
from serving.local_services import free_port, serve_command, start_service, stop
from serving.metrics import read_samples

ROOT = Path(__file__).resolve().parents[1]

API_KEY = "bench-cloud-key"


def start_cloud(ckpt: Path, workers: int, max_batch: int, tmp: Path, source: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = serve_command("cloud", port, [
        f"serve.checkpoint={ckpt}", f"serve.api_key={API_KEY}", f"data.workdir={ROOT / 'data' / 'atomic'}",
        f"serve.cloud.max_batch={max_batch}", f"output_dir={ROOT / 'runs'}", f"serve.cloud.edit_source={source}",
    ], workers=workers)  # fmt: skip
    return start_service(cmd, port, tmp / "cloud.log", "cloud"), port


def versions_seen(port: int, body: bytes, n: int) -> set[str]:
    """Adapter/bank versions in ``n`` answers to the same request (replicas must agree)."""
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    with httpx.Client(timeout=30) as c:
        return {c.post(f"http://127.0.0.1:{port}/v1/edits", content=body, headers=headers).json()["version"]
                for _ in range(n)}  # fmt: skip


def mean_batch(port: int) -> float | None:
    """Edit requests per forward pass so far, from the cloud's ``/metrics``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    got = {name: v for name, _, v in read_samples(text) if name.startswith("persona_edit_batch_size_")}
    count = got.get("persona_edit_batch_size_count", 0)
    return round(got["persona_edit_batch_size_sum"] / count, 2) if count else None


def edit_bodies(ckpt: Path, n: int = 200) -> list[bytes]:
    """``n`` edit requests, each a history of 20 random catalogue items (seeded)."""
    tokens = (ckpt / "items.txt").read_text().splitlines()
    rng = random.Random(0)
    return [json.dumps({"items": [tokens[rng.randrange(1, len(tokens))] for _ in range(20)]}).encode()
            for _ in range(n)]  # fmt: skip


def measure(ckpt: Path, source: str, workers: int, max_batch: int, bodies: list[bytes], args) -> dict:
    """One cloud (``source``, ``workers``, ``max_batch``): warm-up, one closed-loop phase, its batching, versions."""
    header = f"Authorization: Bearer {API_KEY}\r\n"
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_cloud(ckpt, workers, max_batch, Path(tmp), source)
        try:
            uvloop.run(load(port, bodies, 100 * workers, 2 * workers, 30, "/v1/edits", header))  # warm-up
            phase = uvloop.run(load(port, bodies, args.requests, args.concurrency, args.max_seconds,
                                    "/v1/edits", header))  # fmt: skip
            batch = mean_batch(port)
            versions = versions_seen(port, bodies[0], 20)
        finally:
            stop(proc)
    return {"source": source, "workers": workers, "max_batch": max_batch, **phase, "mean_batch": batch,
            "ms_per_edit": round(1000 / phase["req_per_s"], 2) if phase["req_per_s"] else None,
            "versions": sorted(versions)}  # fmt: skip


def write_report(rows: list[dict], meta: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Cloud service load benchmark (`POST /v1/edits`, {meta['dataset']}, loopback): workers × edit batching",
        "",
        f"{meta['machine']}; load average at start {meta['loadavg_start']}, end {meta['loadavg_end']}; uvicorn "
        "workers on one port, one torch thread each; each request = for a 20-item history, `adapter`: adapter "
        "forward + prototype assignment + residual edit; `distilled`: the teacher's log-probabilities + the "
        "distilled edit's solve (`serve.cloud.distill`); `max_batch` = `serve.cloud.max_batch` (1: a forward pass "
        "per request; "
        "else concurrent requests share one); mean batch = requests per forward pass (the cloud's "
        "`persona_edit_batch_size`); ms / edit = 1000 / req/s; client = asyncio HTTP/1.1 keep-alive on the same "
        "machine.",
        "",
        "| source | workers | max_batch | connections | requests | errors | p50 ms | p99 ms | req/s | ms / edit "
        "| mean batch | × vs first row | versions served |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['workers']} | {r['max_batch']} | {r['concurrency']} | {r['requests']} "
            f"| {r['errors']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['req_per_s']:.0f} | {r['ms_per_edit']} "
            f"| {r['mean_batch']} | {r['ratio_vs_first']} | {', '.join(r['versions'])} |"
        )
    lines += ["", f"Command: `{meta['command']}`.", ""]
    (out / f"{name}.md").write_text("\n".join(lines))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--max-batch", default="1,64", help="serve.cloud.max_batch values (1 = a forward pass each)")
    parser.add_argument("--concurrency", type=int, default=8, help="connections")
    parser.add_argument("--sources", default="adapter", help="serve.cloud.edit_source values: adapter and/or distilled")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    parser.add_argument("--name", default="serve_load_cloud", help="report file stem under --out")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    ckpt = run_layout.seed_dir(ROOT / "runs", args.dataset, "sasrec", 0)
    sources = args.sources.split(",")
    if "adapter" in sources and not run_layout.adapter_dir(ckpt).is_dir():
        print(f"no adapter at {run_layout.adapter_dir(ckpt)}:"
              f" run `make run` (or `persona adapter dataset={args.dataset}`)")
        return 2
    meta = {
        "machine": f"{os.cpu_count()} CPU cores",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "command": "python " + " ".join(["benchmarks/serve_load_cloud.py", *sys.argv[1:]]),
        "torch": torch.__version__,
        "dataset": args.dataset,
    }
    bodies = edit_bodies(ckpt)
    grid = [(s, int(w), int(b)) for s in sources for w in args.workers.split(",") for b in args.max_batch.split(",")]
    rows = [measure(ckpt, source, workers, max_batch, bodies, args) for source, workers, max_batch in grid]
    base = rows[0]["req_per_s"]
    for r in rows:
        r["ratio_vs_first"] = round(r["req_per_s"] / base, 2) if base else None
        print(f"cloud {r['source']} workers={r['workers']} max_batch={r['max_batch']} conc={r['concurrency']} "
              f"n={r['requests']} err={r['errors']} p50={r['p50_ms']:.2f}ms p99={r['p99_ms']:.2f}ms "
              f"{r['req_per_s']:.0f} req/s mean batch {r['mean_batch']} {r['ms_per_edit']} ms/edit "
              f"x{r['ratio_vs_first']} vs the first row; versions {r['versions']}", flush=True)  # fmt: skip
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_report(rows, meta, Path(args.out), args.name)
    errors = sum(r["errors"] for r in rows)
    mixed = any(len(r["versions"]) != 1 for r in rows) or any(
        len({v for r in rows if r["source"] == s for v in r["versions"]}) != 1 for s in sources)
    print(f"wrote {args.out}/{args.name}.{{json,md}}; errors: {errors}; one version per source: {not mixed}")
    return 1 if errors or mixed else 0


if __name__ == "__main__":
    sys.exit(main())
