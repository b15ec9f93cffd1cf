"""The item delta beside the per-request edit over request rates (issue 30, 2c): what reaches the events that do
not ask.

Runs :func:`recipes.delta_rates.evaluate_delta_rates` on the ``make run`` checkpoints: the teacher is the frozen
ensemble of ``--teacher-models`` × ``--teacher-seeds``, the device ``--model`` at ``--seeds``; the delta's settings
are ``item_delta:``'s defaults (chosen on ml-100k's validation period). Writes
``reports/benchmarks/item_delta-<dataset>.{json,md}`` and the request-rate curve ``…_rate_curve.png``.

    python benchmarks/item_delta.py [--dataset ml-100k] [--seeds 0,1,2] [--limit 0 (all rows)]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llm_cloud.distill import DistillConfig
from llm_cloud.item_delta import ItemDeltaConfig
from recipes.delta_rates import RATES, DeltaRates, evaluate_delta_rates
from recipes.teacher_stream import run_checkpoints
from recsys.atomic_io import atomic_write_text
from recsys.config import load_config
from recsys.experiment import load_dataset_split
from recsys.report import plot_curves, write_report

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["ndcg@10", "hit@10", "mrr@10"]


def curve_table(res: DeltaRates) -> str:
    seeds = sorted(res.curves)
    lines = ["| policy | " + " | ".join(f"{100 * r:g} %" for r in RATES) + " |", "|---|" + "---|" * len(RATES)]
    for policy in res.curves[seeds[0]]:
        vals = [[res.curves[s][policy][r]["ndcg@10"] for s in seeds] for r in RATES]
        lines.append(f"| {policy} | " + " | ".join(f"{np.mean(v):.4f} ± {np.std(v):.4f}" for v in vals) + " |")
    return "\n".join(lines)


def plot(res: DeltaRates, path: Path, title: str) -> None:
    seeds = sorted(res.curves)
    lines = {policy: ([100 * r for r in RATES], [np.mean([res.curves[s][policy][r]["ndcg@10"] for s in seeds])
                                                 for r in RATES])
             for policy in res.curves[seeds[0]]}  # fmt: skip
    refs = {name: (np.mean([r["ndcg@10"] for r in res.table[name]]), style)
            for name, style in (("device alone", ":"), ("teacher (upper bound)", "--"))}  # fmt: skip
    plot_curves(lines, refs, path, title, "events that ask the cloud (%, random)", "NDCG@10 (test period)")


def ints(csv: str) -> list[int]:
    return [int(x) for x in csv.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", default="sasrec", help="the device model")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--teacher-models", default="sasrec,gru4rec")
    parser.add_argument("--teacher-seeds", default="0,1,2")
    parser.add_argument("--limit", type=int, default=0, help="the first N validation and test rows (0 = all)")
    parser.add_argument("--top-k", type=int, default=64, help="the teacher's list length (64 ids = 256 B)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start, loadavg = time.perf_counter(), os.getloadavg()
    split = load_dataset_split(load_config(overrides=[f"dataset={args.dataset}",
                                                      f"data.workdir={ROOT / 'data' / 'atomic'}"]))  # fmt: skip
    teacher, devices = run_checkpoints(ROOT / "runs", args.dataset, args.model, ints(args.seeds),
                                       args.teacher_models.split(","), ints(args.teacher_seeds))  # fmt: skip
    dcfg, icfg = DistillConfig(), ItemDeltaConfig()
    res = evaluate_delta_rates(split, devices, teacher, dcfg, icfg, args.top_k, args.limit)
    n_items = next(iter(devices.values())).n_items
    meta = {
        "dataset": args.dataset, "protocol": split.protocol, "device": f"{args.model}, seeds {sorted(devices)}",
        "teacher": f"frozen ensemble of {len(teacher.models)}: {args.teacher_models} × seeds {args.teacher_seeds}",
        "item_delta": icfg.model_dump(), "distill": dcfg.model_dump(), "limit_rows": args.limit,
        "top_k_list": args.top_k, "delta_fp16_bytes": 2 * (n_items - 1) * devices[min(devices)].head.dim,
        "fit_seconds": res.fit_seconds, "loadavg_start": loadavg, "loadavg_end": os.getloadavg(),
        "seconds": round(time.perf_counter() - start, 1),
        "command": "python " + " ".join(["benchmarks/item_delta.py", *sys.argv[1:]]),
    }  # fmt: skip
    stem = f"item_delta-{args.dataset}"
    notes = "\n".join(["## Request rate (random asks; answers held until the user's next ask): NDCG@10 mean ± std", "",
                       curve_table(res), "", f"![request-rate curve]({stem}_rate_curve.png)"])  # fmt: skip
    title = f"The item delta beside the per-request edit ({args.dataset}, {args.model} device, {len(devices)} seeds)"
    json_path, md = write_report(Path(args.out), stem, title, res.table, meta, KEYS, notes)
    payload = json.loads(json_path.read_text())
    payload["curves"] = res.curves
    atomic_write_text(json_path, json.dumps(payload, indent=2, default=float) + "\n")
    plot(res, Path(args.out) / f"{stem}_rate_curve.png", title)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
