"""Loopback load benchmark of the device service's ``POST /v1/rank``, next to the bare model's scoring time.

For each dataset (ml-100k, amazon-beauty) and worker count (1, 2): start ``persona serve --role device``
on 127.0.0.1 (uvicorn, httptools + uvloop, one torch thread per worker), store 50 events for each of
200 users, then send a bounded number of rank requests (by user id, k=10, seen items excluded) from a
small asyncio HTTP/1.1 keep-alive client in this process: once one at a time (latency) and once with
``--concurrency`` connections (throughput). Each phase stops at ``--requests`` or ``--max-seconds``.
The bare scoring time is ``DeviceRuntime.rank`` on the same checkpoint and histories in this process
(batch 1, one thread); the overhead ratio is served p50 / bare p50. Results go to
``reports/benchmarks/serve_load.{json,md}``.

The served model is the main job's checkpoint (``runs/<dataset>/sasrec/seed0``) when present, else a
1-epoch SASRec trained here into ``runs/bench-serve`` (latency depends on the architecture and the
catalogue size, not on how well the model is trained).

    python benchmarks/serve_load.py [--datasets ml-100k,amazon-beauty] [--workers 1,2] [--requests 3000]
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
    """``DeviceRuntime.rank`` batch 1, one thread: encoder + head + full-catalogue scores + top-10."""
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
    return {"p50_ms": p50, "p99_ms": p99, "n_items": runtime.n_items - 1}


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


def start_device(ckpt: Path, workers: int, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "serving.cli", "serve", "--role", "device",
        "--port", str(port), "--workers", str(workers),
        f"serve.checkpoint={ckpt}", f"data.workdir={ROOT / 'data' / 'atomic'}", f"serve.db_path={tmp / 'events.db'}",
        f"serve.prototype_cache={tmp / 'prototypes.json'}", "serve.access_log=false",
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


def run_dataset(dataset: str, worker_counts: list[int], args) -> list[dict]:
    ckpt, source = checkpoint_for(dataset)
    tokens = (ckpt / "items.txt").read_text().splitlines()
    rng = random.Random(0)
    users = {f"bench-{u}": [rng.randrange(1, len(tokens)) for _ in range(50)] for u in range(200)}
    bare = bare_scoring(ckpt, list(users.values()))
    bodies = [json.dumps({"user_id": u, "k": 10}).encode() for u in users]
    rows = []
    for workers in worker_counts:
        with tempfile.TemporaryDirectory() as tmp:
            proc, port = start_device(ckpt, workers, Path(tmp))
            try:
                with httpx.Client(timeout=30) as c:
                    for u, ids in users.items():
                        events = [
                            {"event_id": f"{u}-{i}", "user_id": u, "item_id": tokens[j]} for i, j in enumerate(ids)
                        ]
                        c.post(f"http://127.0.0.1:{port}/v1/events", json={"events": events}).raise_for_status()
                uvloop.run(load(port, bodies, 200 * workers, 2 * workers, 30))  # warm-up: every worker
                phases = [
                    uvloop.run(load(port, bodies, args.requests, 1, args.max_seconds)),
                    uvloop.run(load(port, bodies, args.requests, args.concurrency, args.max_seconds)),
                ]
            finally:
                stop(proc)
        for ph in phases:
            row = {
                "dataset": dataset, "n_items": bare["n_items"], "checkpoint": source, "workers": workers, **ph,
                "bare_p50_ms": round(bare["p50_ms"], 3), "bare_p99_ms": round(bare["p99_ms"], 3),
                "overhead_ratio_p50": round(ph["p50_ms"] / bare["p50_ms"], 2),
            }
            rows.append(row)
            print(
                f"{dataset:14s} items={row['n_items']:6d} workers={workers} conc={ph['concurrency']:2d} "
                f"n={ph['requests']:5d} err={ph['errors']} p50={ph['p50_ms']:.2f}ms p99={ph['p99_ms']:.2f}ms "
                f"{ph['req_per_s']:.0f} req/s | bare p50={bare['p50_ms']:.2f}ms ratio={row['overhead_ratio_p50']}",
                flush=True,
            )
    return rows


def write_reports(rows: list[dict], out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Device service load benchmark (`POST /v1/rank`, loopback)",
        "",
        f"{meta['machine']}; load average at start {meta['loadavg_start']}; uvicorn httptools + uvloop, "
        "one torch thread per worker; client = asyncio HTTP/1.1 keep-alive in the same machine. "
        "Requests rank by user id (50 stored events), k=10, seen items excluded, no cloud (base head). "
        "Bare = `DeviceRuntime.rank` batch 1 in-process; ratio = served p50 / bare p50.",
        "",
        "| dataset | items | workers | connections | requests | errors | p50 ms | p99 ms | req/s "
        "| bare p50 ms | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['n_items']} | {r['workers']} | {r['concurrency']} | {r['requests']} "
            f"| {r['errors']} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['req_per_s']:.0f} | {r['bare_p50_ms']:.2f} "
            f"| {r['overhead_ratio_p50']} |"
        )
    lines += ["", f"Goals (ml-100k): p99 < 10 ms and ≥ 500 req/s. Command: `{meta['command']}`.", ""]
    (out / "serve_load.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,amazon-beauty")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--requests", type=int, default=3000, help="per phase")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--concurrency", type=int, default=4, help="connections in the throughput phase")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    args = parser.parse_args()
    meta = {
        "machine": f"{os.cpu_count()} CPU cores",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "command": "python " + " ".join(["benchmarks/serve_load.py", *sys.argv[1:]]),
        "torch": torch.__version__,
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
