"""Loopback load benchmark of the device service's ``POST /v1/rank``, batch-1 vs micro-batched scoring.

For each dataset (ml-100k, amazon-beauty), worker count (1, 2) and scoring mode — ``batch-1``
(``serve.max_batch=1``: every request scored alone) and ``batched`` (the configured micro-batching,
``serve.max_batch`` / ``serve.batch_wait_ms``) — start ``persona serve --role device`` on 127.0.0.1
(uvicorn, httptools + uvloop, one torch thread per worker), store 50 events for each of 200 users, then
send a bounded number of rank requests (by user id, k=10, seen items excluded) from a small asyncio
HTTP/1.1 keep-alive client in this process with 1, 4, 8 and 32 connections (closed loop). Each phase
stops at ``--requests`` or ``--max-seconds``; the mean batch size comes from the service's
``persona_rank_batch_size`` histogram. The bare scoring time is ``DeviceRuntime.rank`` on the same
checkpoint and histories in this process (batch 1, one thread), plus the batched scoring per request at
8 and 32 rows; the overhead ratio is served p50 / bare p50. Results go to
``reports/benchmarks/serve_load.{json,md}``.

The served model is the main job's checkpoint (``runs/<dataset>/sasrec/seed0``) when present, else a
1-epoch SASRec trained here into ``runs/bench-serve`` (latency depends on the architecture and the
catalogue size, not on how well the model is trained).

    python benchmarks/serve_load.py [--datasets ml-100k,amazon-beauty] [--workers 1,2] [--requests 3000]
                                    [--connections 1,4,8,32] [--modes batch-1,batched]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.checkpoint import load_checkpoint  # noqa: E402
from recsys.runtime import DeviceRuntime  # noqa: E402
from serving.config import load_app_config  # noqa: E402


def checkpoint_for(dataset: str) -> tuple[Path, str]:
    """The main job's seed-0 SASRec checkpoint, else a 1-epoch one trained here (for timing only)."""
    main = ROOT / "runs" / dataset / "sasrec" / "seed0"
    if (main / "model.yaml").is_file():
        return main, "main job checkpoint"
    bench = ROOT / "runs" / "bench-serve" / dataset / "sasrec" / "seed0"
    if not (bench / "model.yaml").is_file():
        from recsys.experiment import train_seeds

        print(f"[{dataset}] no trained model: training a 1-epoch SASRec for timing ...", flush=True)
        cfg = load_app_config(
            overrides=[
                f"dataset={dataset}", "train.epochs=1", "seeds=[0]", f"output_dir={ROOT / 'runs' / 'bench-serve'}",
                f"data.workdir={ROOT / 'data' / 'atomic'}",
            ]
        )
        train_seeds(cfg, progress=False)
    return bench, "1-epoch checkpoint (timing only)"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def bare_scoring(ckpt: Path, histories: list[list[int]], repeats: int = 2000) -> dict:
    """``DeviceRuntime.rank`` batch 1, one thread: encoder + head + full-catalogue scores + top-10; and the
    batched path (``user_states`` + ``rank_states``) for 1, 8 and 32 requests at once, per request."""
    torch.set_num_threads(1)
    model, _, tokens = load_checkpoint(ckpt)
    runtime = DeviceRuntime(model, tokens)
    for h in histories[:50]:
        runtime.rank(h, 10, exclude=set(h))
    times = []
    for i in range(repeats):
        h = histories[i % len(histories)]
        t0 = time.perf_counter()
        runtime.rank(h, 10, exclude=set(h))
        times.append(time.perf_counter() - t0)
    p50, p99 = percentile(times, 50) * 1e3, percentile(times, 99) * 1e3
    out = {"p50_ms": p50, "p99_ms": p99, "n_items": runtime.n_items - 1}
    for b in (1, 8, 32):
        batches = [histories[i : i + b] for i in range(0, len(histories) - b + 1, b)]
        per_row = []
        for n in range(max(20, repeats // b)):
            hs = batches[n % len(batches)]
            t0 = time.perf_counter()
            runtime.rank_states(runtime.user_states(hs), [None] * b, [10] * b, [set(h) for h in hs])
            per_row.append((time.perf_counter() - t0) / b)
        out[f"batch{b}_per_request_ms"] = percentile(per_row, 50) * 1e3
    return out


async def load(
    port: int, bodies: list[bytes], n: int, concurrency: int, max_seconds: float, path: str = "/v1/rank",
    headers: str = "",
) -> dict:
    """Closed-loop HTTP/1.1 keep-alive client: ``concurrency`` connections share ``n`` POSTs to ``path``.

    ``headers``: extra header lines, each ending in CRLF (e.g. the cloud's API key).
    """
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    deadline = time.monotonic() + max_seconds

    async def conn(cid: int) -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while issued < n and time.monotonic() < deadline:
                body = bodies[issued % len(bodies)]
                issued += 1
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                t0 = time.perf_counter()
                writer.write(head + body)
                status = (await reader.readline()).split(b" ", 2)
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if len(status) < 2 or status[1] != b"200":
                    errors.append(payload[:200].decode(errors="replace"))
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(f"connection {cid}: {exc!r}")
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn(i) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": round(wall, 3),
        "p50_ms": round(percentile(latencies, 50) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 99) * 1e3, 3),
        "req_per_s": round(len(latencies) / wall, 1),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_device(ckpt: Path, workers: int, tmp: Path, extra: list[str] = ()) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "serving.cli", "serve", "--role", "device",
        "--port", str(port), "--workers", str(workers),
        f"serve.checkpoint={ckpt}", f"data.workdir={ROOT / 'data' / 'atomic'}", f"serve.db_path={tmp / 'events.db'}",
        f"serve.prototype_cache={tmp / 'prototypes.json'}", "serve.http.access_log=false",
        f"serve.operator_key={OPERATOR_KEY}", *extra,
    ]
    return start_service(cmd, port, tmp / "server.log", "device"), port


def start_service(cmd: list[str], port: int, log: Path, name: str) -> subprocess.Popen:
    """Start ``persona serve`` (one torch thread per worker) and wait until ``/healthz`` on ``port`` answers."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} service exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{name} service did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


# the load sends the operator key (one constant-time compare; a user token costs one HMAC more per request)
OPERATOR_KEY = "bench-serve-load-key"
AUTH = {"Authorization": f"Bearer {OPERATOR_KEY}"}
AUTH_LINE = f"Authorization: Bearer {OPERATOR_KEY}\r\n"
MODES = {"batch-1": ["serve.max_batch=1"], "batched": []}  # batched: serve.max_batch / batch_wait_ms as configured


def batch_counts(port: int) -> tuple[float, float]:
    """(sum, count) of the service's ``persona_rank_batch_size`` histogram (all workers)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30, headers=AUTH).text
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for kind in values:
            if line.startswith(f"persona_rank_batch_size_{kind}"):
                values[kind] += float(line.rsplit(" ", 1)[1])
    return values["sum"], values["count"]


def run_dataset(dataset: str, worker_counts: list[int], args) -> list[dict]:
    ckpt, source = checkpoint_for(dataset)
    tokens = (ckpt / "items.txt").read_text().splitlines()
    rng = random.Random(0)
    users = {f"bench-{u}": [rng.randrange(1, len(tokens)) for _ in range(50)] for u in range(200)}
    bare = bare_scoring(ckpt, list(users.values()))
    print(
        f"{dataset}: bare batch-1 p50={bare['p50_ms']:.3f}ms; batched path per request: 1 row "
        f"{bare['batch1_per_request_ms']:.3f}ms, 8 rows "
        f"{bare['batch8_per_request_ms']:.3f}ms, 32 rows {bare['batch32_per_request_ms']:.3f}ms", flush=True,
    )
    bodies = [json.dumps({"user_id": u, "k": 10}).encode() for u in users]
    connections = [int(c) for c in args.connections.split(",")]
    cfg = load_app_config().serve
    rows = []
    for workers in worker_counts:
        for mode in args.modes.split(","):
            extra = MODES[mode]
            with tempfile.TemporaryDirectory() as tmp:
                proc, port = start_device(ckpt, workers, Path(tmp), extra)
                phases = []
                try:
                    with httpx.Client(timeout=30, headers=AUTH) as c:
                        for u, ids in users.items():
                            events = [
                                {"event_id": f"{u}-{i}", "user_id": u, "item_id": tokens[j]} for i, j in enumerate(ids)
                            ]
                            c.post(f"http://127.0.0.1:{port}/v1/events", json={"events": events}).raise_for_status()
                    uvloop.run(load(port, bodies, 300 * workers, 4 * workers, 30, headers=AUTH_LINE))  # warm-up
                    for conc in connections:
                        s0, n0 = batch_counts(port)
                        ph = uvloop.run(load(port, bodies, args.requests, conc, args.max_seconds, headers=AUTH_LINE))
                        s1, n1 = batch_counts(port)
                        ph["mean_batch"] = round((s1 - s0) / (n1 - n0), 2) if n1 > n0 else None
                        phases.append(ph)
                finally:
                    stop(proc)
            for ph in phases:
                row = {
                    "dataset": dataset, "n_items": bare["n_items"], "checkpoint": source, "workers": workers,
                    "mode": mode, "max_batch": 1 if mode == "batch-1" else cfg.max_batch,
                    "batch_wait_ms": cfg.batch_wait_ms, **ph,
                    "bare_p50_ms": round(bare["p50_ms"], 3), "bare_p99_ms": round(bare["p99_ms"], 3),
                    "bare_batch1_per_request_ms": round(bare["batch1_per_request_ms"], 3),
                    "bare_batch8_per_request_ms": round(bare["batch8_per_request_ms"], 3),
                    "bare_batch32_per_request_ms": round(bare["batch32_per_request_ms"], 3),
                    "overhead_ratio_p50": round(ph["p50_ms"] / bare["p50_ms"], 2),
                }
                rows.append(row)
                print(
                    f"{dataset:14s} items={row['n_items']:6d} workers={workers} {mode:8s} conc={ph['concurrency']:2d} "
                    f"n={ph['requests']:5d} err={ph['errors']} p50={ph['p50_ms']:.2f}ms p99={ph['p99_ms']:.2f}ms "
                    f"{ph['req_per_s']:.0f} req/s batch={ph['mean_batch']} | bare p50={bare['p50_ms']:.2f}ms "
                    f"ratio={row['overhead_ratio_p50']}",
                    flush=True,
                )
    return rows


def side_by_side(rows: list[dict]) -> list[str]:
    """One line per dataset × workers × connections: batch-1 next to batched."""
    lines = [
        "| dataset | workers | connections | batch-1 req/s | p50 ms | p99 ms | errors | batched req/s | p50 ms "
        "| p99 ms | errors | mean batch | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["dataset"], r["workers"], r["concurrency"], r["mode"]): r for r in rows}
    for (dataset, workers, conc, mode), one in by_key.items():
        if mode != "batch-1" or (dataset, workers, conc, "batched") not in by_key:
            continue
        bat = by_key[(dataset, workers, conc, "batched")]
        lines.append(
            f"| {dataset} | {workers} | {conc} | {one['req_per_s']:.0f} | {one['p50_ms']:.2f} | {one['p99_ms']:.2f} "
            f"| {one['errors']} | {bat['req_per_s']:.0f} | {bat['p50_ms']:.2f} | {bat['p99_ms']:.2f} "
            f"| {bat['errors']} | {bat['mean_batch']} | {bat['req_per_s'] / max(one['req_per_s'], 1e-9):.2f}x |"
        )
    return lines


def write_reports(rows: list[dict], out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Device service load benchmark (`POST /v1/rank`, loopback)",
        "",
        f"{meta['machine']}; load average at start {meta['loadavg_start']}, at end {meta['loadavg_end']}; "
        "uvicorn httptools + uvloop, one torch thread per worker; client = asyncio HTTP/1.1 keep-alive, closed "
        "loop, in the same machine (it competes with the server for the cores). "
        "Requests rank by user id (50 stored events), k=10, seen items excluded, no cloud (base head). "
        "batch-1 = `serve.max_batch=1`; batched = micro-batching as configured "
        f"(`serve.max_batch={meta['max_batch']}`, `serve.batch_wait_ms={meta['batch_wait_ms']}`); mean batch = "
        "requests per forward pass. Bare = `DeviceRuntime.rank` batch 1 in-process; ratio = served p50 / bare p50.",
        "",
        "## batch-1 vs micro-batched",
        "",
        *side_by_side(rows),
        "",
        "## All runs",
        "",
        "| dataset | items | workers | mode | connections | requests | errors | p50 ms | p99 ms | req/s "
        "| mean batch | bare p50 ms | batched path ms/req at 1 / 8 / 32 rows | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['n_items']} | {r['workers']} | {r['mode']} | {r['concurrency']} | {r['requests']} "
            f"| {r['errors']} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['req_per_s']:.0f} | {r['mean_batch']} "
            f"| {r['bare_p50_ms']:.2f} "
            f"| {r['bare_batch1_per_request_ms']:.3f} / {r['bare_batch8_per_request_ms']:.3f} "
            f"/ {r['bare_batch32_per_request_ms']:.3f} "
            f"| {r['overhead_ratio_p50']} |"
        )
    lines += [
        "",
        "Goals (ml-100k, 1 worker): ≥ 2,000 req/s at 8 connections with p99 < 10 ms and no errors (stretch 4,000). "
        f"Command: `{meta['command']}`.",
        "",
    ]
    (out / "serve_load.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,amazon-beauty")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--requests", type=int, default=3000, help="per phase")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--connections", default="1,4,8,32", help="connection counts, one phase each")
    parser.add_argument("--modes", default="batch-1,batched", help=f"scoring modes: {', '.join(MODES)}")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    args = parser.parse_args()
    meta = {
        "machine": f"{os.cpu_count()} CPU cores",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "command": "python " + " ".join(["benchmarks/serve_load.py", *sys.argv[1:]]),
        "torch": torch.__version__,
        "max_batch": load_app_config().serve.max_batch,
        "batch_wait_ms": load_app_config().serve.batch_wait_ms,
    }
    rows = []
    for dataset in args.datasets.split(","):
        rows += run_dataset(dataset.strip(), [int(w) for w in args.workers.split(",")], args)
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    write_reports(rows, Path(args.out), meta)
    errors = sum(r["errors"] for r in rows)
    print(f"wrote {args.out}/serve_load.{{json,md}}; errors: {errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
