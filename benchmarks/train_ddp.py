"""Base-model training throughput: 1 process vs N DDP processes (torchrun, gloo) on this machine.

Trains SASRec (the default config: D=64, 2 layers, ~0.2M parameters) on ml-100k's training period
for a few epochs in each setting, in fresh processes, one thread per process, the same global batch.
Throughput = training windows (user sequences cut to ≤ max_seq_len + 1 items) per second of training,
validation excluded; the wall time including rank 0's validation is reported too. Also measures one
gloo all-reduce of the model's gradient (what DDP adds to every step). Prints a table with the ratio
and writes ``reports/benchmarks/train_ddp.{json,md}``.

    python benchmarks/train_ddp.py [--epochs 3] [--nproc 2] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One training run (a torchrun worker when N > 1); rank 0 writes its timings to ``args.result``."""
    import torch
    import torch.distributed as dist

    from recsys import distributed
    from recsys.experiment import load_dataset_split
    from recsys.train import make_windows, train_model
    from serving.config import load_app_config

    overrides = [f"train.epochs={args.epochs}", "train.patience=1000", "seeds=[0]", *args.overrides]
    cfg = load_app_config(overrides=overrides)
    with distributed.process_group(cfg):
        split = distributed.rank0_first(load_dataset_split, cfg)
        n_windows = len(make_windows(split.train_sequences, cfg.data.max_seq_len)[0])
        t0 = time.perf_counter()
        result = train_model(split, cfg, seed=0, progress=False)
        wall = time.perf_counter() - t0
        n_params = sum(p.numel() for p in result.model.parameters())
        allreduce_ms = None
        if distributed.world_size() > 1:  # cost of one gradient all-reduce (fp32, one bucket's worth of bytes)
            grad = torch.randn(n_params)
            times = []
            for _ in range(30):
                t = time.perf_counter()
                dist.all_reduce(grad)
                times.append(time.perf_counter() - t)
            allreduce_ms = statistics.median(times[5:]) * 1e3
        if distributed.is_rank0():
            train_s = sum(h["train_s"] for h in result.history)
            epochs = len(result.history)
            row = {
                "processes": distributed.world_size(),
                "epochs": epochs,
                "windows_per_epoch": n_windows,
                "global_batch": cfg.train.batch_size,
                "steps_per_epoch": -(-n_windows // cfg.train.batch_size),
                "train_s": round(train_s, 2),
                "wall_s": round(wall, 2),
                "sequences_per_s": round(epochs * n_windows / train_s, 1),
                "sequences_per_s_incl_validation": round(epochs * n_windows / wall, 1),
                "params": n_params,
                "allreduce_ms": None if allreduce_ms is None else round(allreduce_ms, 3),
                "best_valid_ndcg@10": round(result.best_valid["ndcg@10"], 4),
            }
            Path(args.result).write_text(json.dumps(row))


def run(nproc: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        me = [str(Path(__file__).resolve()), "--worker", "--result", str(result), "--epochs", str(args.epochs)]
        if nproc == 1:
            cmd = [sys.executable, *me]
        else:
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
                "--max-restarts", "0", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",
                "--rdzv-id", uuid.uuid4().hex, *me,
            ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([*cmd, *args.overrides], cwd=ROOT, env=env, check=True)
        return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2, help="processes of the DDP run (compared with 1)")
    ap.add_argument("--out", default=str(ROOT / "reports/benchmarks"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config key=value overrides (default: ml-100k SASRec)")
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    load_before = os.getloadavg()
    rows = [run(1, args), run(args.nproc, args)]
    base = rows[0]["sequences_per_s"]
    for r in rows:
        r["speedup"] = round(r["sequences_per_s"] / base, 2)
    cpus = os.cpu_count()
    title = (
        f"Base-model training throughput, ml-100k SASRec, 1 vs {args.nproc} processes "
        f"(torchrun + gloo, 1 thread each, {cpus} shared CPU cores, {rows[0]['epochs']} epochs)"
    )
    head = (
        "| processes | global batch | steps/epoch | train s | sequences/s | × vs 1 "
        "| incl. validation seq/s | all-reduce ms/step | best valid NDCG@10 |"
    )
    lines = [f"# {title}", "", head, "|" + "---|" * 9]
    for r in rows:
        ar = "—" if r["allreduce_ms"] is None else f"{r['allreduce_ms']:.2f}"
        lines.append(
            f"| {r['processes']} | {r['global_batch']} | {r['steps_per_epoch']} | {r['train_s']} | "
            f"{r['sequences_per_s']} | {r['speedup']} | {r['sequences_per_s_incl_validation']} | {ar} | "
            f"{r['best_valid_ndcg@10']} |"
        )
    md = "\n".join(lines) + "\n"
    print("\n" + md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"title": title, "overrides": args.overrides, "cpus": cpus, "load_avg_before": load_before}
    (out / "train_ddp.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "train_ddp.md").write_text(md)


if __name__ == "__main__":
    main()
