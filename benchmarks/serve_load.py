"""Loopback load benchmark of ``POST /v1/rank``: the device service on torch and on onnx beside a trivial FastAPI
route (the floor), side by side in one run.

For each dataset, start on 127.0.0.1 at once: the floor (a FastAPI app whose ``POST /v1/rank`` parses the JSON
body and returns a fixed small JSON answer, served by the same uvicorn settings as the services: httptools +
uvloop, the same HTTP guards), and ``persona serve --role device`` once per target runtime (``serve.device.runtime``
torch / onnx; ``:b1`` appended means ``serve.device.max_batch=1``), each with ``--workers`` workers and one model thread
per worker. Store 50 events for each of 200 users on every device, then send rank requests (by user id, k=10,
seen items excluded, no cloud: base head) from a small asyncio HTTP/1.1 keep-alive client in this process with
each connection count (closed loop), the targets in turns within each round and ``--rounds`` rounds, so every
target sees the same machine load; each phase stops at ``--requests`` or ``--max-seconds``. A target's numbers
are the median over rounds. The machine's load average is recorded before, after and during each phase.

The bare model is timed in this process too: ``DeviceRuntime.rank`` and ``OnnxDeviceRuntime.rank`` batch 1, one
thread, on the same histories, and their batched path per request at 8 and 32 rows. ``over floor`` = served p50 −
floor p50 of the same round and connection count; at 1 connection, ``above floor + model`` = that minus the bare
model's p50 (the issue's goal: ≤ 0.3 ms). Results go to ``reports/benchmarks/serve_load.{json,md}``.

The served model is the main job's checkpoint (``runs/<dataset>/sasrec/seed0``) when present, else a
1-epoch SASRec trained here into ``runs/bench-serve`` (latency depends on the architecture and the
catalogue size, not on how well the model is trained). The onnx runtime serves ``<checkpoint>/device-onnx``,
which ``persona serve`` exports when it is missing.

    python benchmarks/serve_load.py [--datasets ml-100k] [--targets floor,torch,onnx] [--workers 1]
                                    [--connections 1,8,32] [--rounds 2] [--requests 2000] [--max-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
import uvloop

from recsys.checkpoint import load_checkpoint
from recsys.runtime import DeviceRuntime
from serving.config import load_app_config
from serving.load_gen import load, ms, percentile
from serving.local_services import free_port, serve_command, start_service, stop

ROOT = Path(__file__).resolve().parents[1]


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


def bare_scoring(ckpt: Path, histories: list[list[int]], repeats: int = 1000) -> dict:
    """The bare model per request, one thread, in this process: each runtime's ``rank`` batch 1 (state → head →
    full-catalogue scores → top 10, seen items excluded), and its batched path (``user_states`` + ``rank_states``)
    for 8 and 32 requests at once, per request (ms). The runtimes run in turns, so both see the same load."""
    from persona_device.runtime import OnnxDeviceRuntime
    from serving.engine import onnx_export_dir

    torch.set_num_threads(1)
    model, _, tokens = load_checkpoint(ckpt)
    cfg = load_app_config(overrides=[f"serve.checkpoint={ckpt}"])
    runtimes = {"torch": DeviceRuntime(model, tokens), "onnx": OnnxDeviceRuntime.load(onnx_export_dir(cfg), threads=1)}
    times: dict[str, dict[int, list[float]]] = {name: {1: [], 8: [], 32: []} for name in runtimes}
    for rep in range(max(1, repeats // 100)):
        for name, rt in runtimes.items():
            for i in range(100):
                h = histories[(rep * 100 + i) % len(histories)]
                t0 = time.perf_counter()
                rt.rank(h, 10, exclude=set(h))
                times[name][1].append(time.perf_counter() - t0)
            for b in (8, 32):
                for i in range(max(2, 100 // b)):
                    hs = [histories[(i * b + j) % len(histories)] for j in range(b)]
                    t0 = time.perf_counter()
                    rt.rank_states(rt.user_states(hs), [None] * b, [10] * b, [set(h) for h in hs])
                    times[name][b].append((time.perf_counter() - t0) / b)
    out = {"n_items": runtimes["torch"].n_items - 1}
    for name, by_batch in times.items():
        out[name] = {"p50_ms": ms(percentile(by_batch[1], 50)), "p99_ms": ms(percentile(by_batch[1], 99)),
                     **{f"batch{b}_per_request_ms": ms(percentile(by_batch[b], 50)) for b in (8, 32)}}
    return out


def start_device(ckpt: Path, workers: int, tmp: Path, extra: list[str] = ()) -> tuple[subprocess.Popen, int]:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = serve_command("device", port, [
        f"serve.checkpoint={ckpt}", f"data.workdir={ROOT / 'data' / 'atomic'}",
        f"serve.device.db_path={tmp / 'events.db'}", f"serve.device.prototype_cache={tmp / 'prototypes.json'}",
        f"serve.operator_key={OPERATOR_KEY}", *extra,
    ], workers=workers)  # fmt: skip
    return start_service(cmd, port, tmp / "server.log", "device"), port


def start_floor(tmp: Path) -> tuple[subprocess.Popen, int]:
    """The floor: :func:`serve_floor` in a process of its own, as the services run."""
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-floor", str(port)]
    return start_service(cmd, port, tmp / "floor.log", "floor"), port


def serve_floor(port: int) -> None:
    """A trivial FastAPI app on the services' uvicorn settings: ``POST /v1/rank`` parses its JSON body and returns
    a fixed answer of the ranking's shape (10 items); ``GET /healthz`` answers."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response

    from serving.server import settle, uvicorn_config

    app = FastAPI()
    answer = json.dumps({"items": [{"item_id": str(i), "title": None, "score": 1.0} for i in range(10)],
                         "adaptation": "base", "version": None, "prototype_id": None, "history_length": 50,
                         "unknown_items": []}, separators=(",", ":"))  # fmt: skip

    @app.post("/v1/rank")
    async def rank(body: dict) -> Response:
        return Response(answer, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    settle()
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", port)).run()


# the load sends the operator key (one constant-time compare; a user token costs one HMAC more per request)
OPERATOR_KEY = "bench-serve-load-key"
AUTH = {"Authorization": f"Bearer {OPERATOR_KEY}"}
AUTH_LINE = f"Authorization: Bearer {OPERATOR_KEY}\r\n"


def target_overrides(target: str) -> list[str]:
    """``torch`` / ``onnx``: ``serve.device.runtime``; a ``:b1`` suffix: batch-1 scoring
    (``serve.device.max_batch=1``)."""
    runtime, _, mode = target.partition(":")
    if runtime not in ("torch", "onnx") or mode not in ("", "b1"):
        raise SystemExit(f"unknown target {target!r}: floor, torch, onnx, torch:b1, onnx:b1")
    return [f"serve.device.runtime={runtime}", *(["serve.device.max_batch=1"] if mode == "b1" else [])]


def batch_counts(port: int) -> tuple[float, float]:
    """(sum, count) of the service's ``persona_rank_batch_size`` histogram (all workers)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30, headers=AUTH).text
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for kind in values:
            if line.startswith(f"persona_rank_batch_size_{kind}"):
                values[kind] += float(line.rsplit(" ", 1)[1])
    return values["sum"], values["count"]


def store_events(port: int, users: dict[str, list[int]], tokens: list[str]) -> None:
    with httpx.Client(timeout=30, headers=AUTH) as c:
        for u, ids in users.items():
            events = [{"event_id": f"{u}-{i}", "user_id": u, "item_id": tokens[j]} for i, j in enumerate(ids)]
            c.post(f"http://127.0.0.1:{port}/v1/events", json={"events": events}).raise_for_status()


def phase(target: str, port: int, bodies: list[bytes], conc: int, args) -> dict:
    """One closed-loop phase against ``port``, with the load average and (devices) the mean batch size."""
    device = target != "floor"
    s0, n0 = batch_counts(port) if device else (0.0, 0.0)
    ph = uvloop.run(load(port, bodies, args.requests, conc, args.max_seconds, headers=AUTH_LINE))
    s1, n1 = batch_counts(port) if device else (0.0, 0.0)
    ph["mean_batch"] = round((s1 - s0) / (n1 - n0), 2) if n1 > n0 else None
    ph["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return ph


def run_dataset(dataset: str, workers: int, args) -> tuple[list[dict], dict]:
    """Every target up at once; rounds × connections × targets phases in turns; the bare models."""
    ckpt, source = checkpoint_for(dataset)
    tokens = (ckpt / "items.txt").read_text().splitlines()
    rng = random.Random(0)
    users = {f"bench-{u}": [rng.randrange(1, len(tokens)) for _ in range(50)] for u in range(200)}
    bodies = [json.dumps({"user_id": u, "k": 10}).encode() for u in users]
    targets = args.targets.split(",")
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    phases: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for target in targets:
                if target == "floor":
                    servers[target] = start_floor(Path(tmp))
                else:
                    servers[target] = start_device(ckpt, workers, Path(tmp) / target.replace(":", "-"),
                                                   target_overrides(target))  # fmt: skip
                    store_events(servers[target][1], users, tokens)
            for _, port in servers.values():  # warm-up
                uvloop.run(load(port, bodies, 300 * workers, 4 * workers, 30, headers=AUTH_LINE))
            for rnd in range(args.rounds):
                for conc in [int(c) for c in args.connections.split(",")]:
                    for target in targets:
                        ph = phase(target, servers[target][1], bodies, conc, args)
                        phases.append({"dataset": dataset, "workers": workers, "target": target, "round": rnd, **ph})
                        print(f"{dataset} w={workers} round {rnd} {target:9s} conc={conc:2d} n={ph['requests']:5d} "
                              f"err={ph['errors']} p50={ph['p50_ms']:.2f}ms p99={ph['p99_ms']:.2f}ms "
                              f"{ph['req_per_s']:.0f} req/s batch={ph['mean_batch']} load={ph['loadavg_1m']}",
                              flush=True)  # fmt: skip
        finally:
            for proc, _ in servers.values():
                stop(proc)
    bare = bare_scoring(ckpt, list(users.values()))
    bare.update(dataset=dataset, checkpoint=source)
    print(f"{dataset}: bare p50 torch {bare['torch']['p50_ms']} ms, onnx {bare['onnx']['p50_ms']} ms", flush=True)
    return phases, bare


def summarise(phases: list[dict], bare: dict[str, dict]) -> list[dict]:
    """Per dataset × workers × connections × target: medians over rounds; p50 over the floor of the same round."""
    floor = {(p["dataset"], p["workers"], p["concurrency"], p["round"]): p for p in phases if p["target"] == "floor"}
    groups: dict[tuple, list[dict]] = {}
    for p in phases:
        groups.setdefault((p["dataset"], p["workers"], p["concurrency"], p["target"]), []).append(p)
    rows = []
    for (dataset, workers, conc, target), ps in groups.items():
        over = [p["p50_ms"] - floor[(dataset, workers, conc, p["round"])]["p50_ms"]
                for p in ps if (dataset, workers, conc, p["round"]) in floor]  # fmt: skip
        row = {"dataset": dataset, "workers": workers, "connections": conc, "target": target,
               "requests": sum(p["requests"] for p in ps), "errors": sum(p["errors"] for p in ps),
               **{k: round(statistics.median(p[k] for p in ps), 3) for k in ("req_per_s", "p50_ms", "p99_ms")},
               "mean_batch": ps[0]["mean_batch"] and round(statistics.median(p["mean_batch"] or 0 for p in ps), 2),
               "over_floor_ms": round(statistics.median(over), 3) if over and target != "floor" else None}  # fmt: skip
        runtime = target.partition(":")[0]
        if conc == 1 and runtime in bare[dataset] and row["over_floor_ms"] is not None:
            row["above_floor_and_model_ms"] = round(row["over_floor_ms"] - bare[dataset][runtime]["p50_ms"], 3)
        rows.append(row)
    return rows


def side_by_side(rows: list[dict], targets: list[str]) -> list[str]:
    """One line per dataset × workers × connections: every target's req/s, p50, p99 and p50 over the floor."""
    head = "| dataset | workers | connections | " + " | ".join(
        f"{t} req/s | p50 ms | p99 ms" + (" | over floor ms" if t != "floor" else "") for t in targets) + " |"
    cols = sum(4 if t != "floor" else 3 for t in targets) + 3
    lines = [head, "|" + "---|" * cols]
    by_key = {(r["dataset"], r["workers"], r["connections"], r["target"]): r for r in rows}
    for dataset, workers, conc in dict.fromkeys((r["dataset"], r["workers"], r["connections"]) for r in rows):
        cells = []
        for t in targets:
            r = by_key.get((dataset, workers, conc, t))
            if r is None:
                cells.append(" – | – | –" + (" | –" if t != "floor" else ""))
                continue
            err = f" ({r['errors']} errors)" if r["errors"] else ""
            cells.append(f" {r['req_per_s']:,.0f}{err} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f}"
                         + (f" | {r['over_floor_ms']:+.2f}" if t != "floor" else ""))  # fmt: skip
        lines.append(f"| {dataset} | {workers} | {conc} |" + " |".join(cells) + " |")
    return lines


def write_reports(rows: list[dict], phases: list[dict], bare: dict, out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "rows": rows, "bare": bare, "phases": phases}
    (out / "serve_load.json").write_text(json.dumps(payload, indent=2) + "\n")
    targets = meta["targets"]
    lines = [
        "# Device service load: torch vs onnx runtime vs a trivial FastAPI route (`POST /v1/rank`, loopback)",
        "",
        f"{meta['machine']}; load average (1, 5, 15 min) at start {meta['loadavg_start']}, at end "
        f"{meta['loadavg_end']}; 1-minute load during the phases {meta['loadavg_phases']} (min / median / max): the "
        "machine is shared with other jobs, so compare numbers of this run with each other only. uvicorn httptools + "
        "uvloop, one model thread per worker; client = asyncio HTTP/1.1 keep-alive, closed loop, in the same machine "
        "(it competes with the servers for the cores). Every target is up for the whole run and the phases go in "
        f"turns (targets within each connection count, {meta['rounds']} rounds; medians over the rounds). Requests "
        "rank by user id (50 stored events), k=10, seen items excluded, no cloud (base head), micro-batched as "
        f"configured (`serve.device.max_batch={meta['max_batch']}`, "
        f"`serve.device.batch_wait_ms={meta['batch_wait_ms']}`; a "
        "`:b1` target: `serve.device.max_batch=1`). floor = a FastAPI route that parses the body and returns a fixed "
        "answer, on the same server settings; over floor = p50 − the floor's p50 in the same round.",
        "",
        "## Side by side",
        "",
        *side_by_side(rows, targets),
        "",
        "## The bare model in this process (ms per request, one thread)",
        "",
        "| dataset | runtime | batch 1 p50 | batch 1 p99 | batched, 8 rows | batched, 32 rows |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, b in bare.items():
        for name in ("torch", "onnx"):
            m = b[name]
            lines.append(f"| {dataset} ({b['n_items']} items) | {name} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} "
                         f"| {m['batch8_per_request_ms']:.3f} | {m['batch32_per_request_ms']:.3f} |")
    ones = [r for r in rows if "above_floor_and_model_ms" in r]
    lines += ["", "## At 1 connection: what a request costs above the floor and the model", "",
              "| dataset | workers | target | p50 ms | floor p50 ms | bare model p50 ms | above floor + model ms |",
              "|---|---|---|---|---|---|---|"]
    for r in ones:
        runtime = r["target"].partition(":")[0]
        lines.append(f"| {r['dataset']} | {r['workers']} | {r['target']} | {r['p50_ms']:.2f} "
                     f"| {r['p50_ms'] - r['over_floor_ms']:.2f} | {bare[r['dataset']][runtime]['p50_ms']:.3f} "
                     f"| {r['above_floor_and_model_ms']:+.2f} |")
    lines += [
        "",
        "Goals (issue 31, ml-100k, 1 worker): ≥ 2,000 req/s at 8 connections with p99 < 10 ms and no errors (≥ 4,000 "
        "with two workers); at 1 connection ≤ the floor + the model + 0.3 ms. "
        f"Command: `{meta['command']}`; every phase in `serve_load.json`.",
        "",
    ]
    (out / "serve_load.md").write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k")
    parser.add_argument("--targets", default="floor,torch,onnx", help="floor, torch, onnx, torch:b1, onnx:b1")
    parser.add_argument("--workers", default="1", help="worker counts, e.g. 1,2")
    parser.add_argument("--connections", default="1,8,32", help="connection counts, one phase each")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2000, help="per phase")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the floor's process
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    serve = load_app_config().serve
    meta = {
        "machine": f"{os.cpu_count()} CPU cores",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "command": "python " + " ".join(["benchmarks/serve_load.py", *sys.argv[1:]]),
        "torch": torch.__version__, "targets": args.targets.split(","), "rounds": args.rounds,
        "max_batch": serve.device.max_batch, "batch_wait_ms": serve.device.batch_wait_ms,
    }
    phases, bare = [], {}
    for dataset in args.datasets.split(","):
        for workers in [int(w) for w in args.workers.split(",")]:
            ps, b = run_dataset(dataset.strip(), workers, args)
            phases += ps
            bare[dataset.strip()] = b
    loads = sorted(p["loadavg_1m"] for p in phases)
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["loadavg_phases"] = [loads[0], statistics.median(loads), loads[-1]]
    rows = summarise(phases, bare)
    write_reports(rows, phases, bare, Path(args.out), meta)
    errors = sum(r["errors"] for r in rows)
    print(f"wrote {args.out}/serve_load.{{json,md}}; errors: {errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
