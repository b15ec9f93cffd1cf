"""The cloud teacher over the stream (issue 30): fresh vs frozen teacher, distilled edits, request policies.

Runs :func:`recipes.teacher_stream.evaluate_stream` on the ``make run`` checkpoints: the teacher is the
ensemble of ``--teacher-models`` × ``--teacher-seeds``, the device ``--model`` at ``--seeds``. The fresh
teacher's refresh settings are chosen on the validation period from a small grid. Writes
``reports/benchmarks/teacher_stream-<dataset>.{json,md}`` and the request-rate curve ``…_rate_curve.png``.

    python benchmarks/teacher_stream.py [--dataset ml-100k] [--seeds 0,1,2] [--limit 0 (all rows)]

``--teacher-only`` measures the frozen vs the fresh teacher alone (no device edits, no request curves) and
writes ``teacher_stream-<dataset>-teacher.{json,md}``: the part of the experiment that fits a 2-core
machine on the larger catalogues.
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
from llm_cloud.fresh_teacher import RefreshConfig
from llm_cloud.teacher import EnsembleTeacher
from recipes.teacher_stream import (
    RATES,
    evaluate_stream,
    fresh_teacher_valid_score,
    run_checkpoints,
    teacher_table,
)
from recsys.atomic_io import atomic_write_text
from recsys.config import load_config
from recsys.experiment import load_dataset_split
from recsys.report import plot_curves, write_report

ROOT = Path(__file__).resolve().parents[1]

KEYS = ["ndcg@10", "hit@10", "mrr@10"]
GRID = [RefreshConfig(every_events=1000, epochs=1, lr=2e-4), RefreshConfig(every_events=1000, epochs=1, lr=1e-3),
        RefreshConfig(every_events=2000, epochs=2, lr=2e-4)]  # fmt: skip


def select_refresh(members: EnsembleTeacher, split, limit: int, grid: list[RefreshConfig]
                   ) -> tuple[RefreshConfig, list[dict]]:  # fmt: skip
    scores = [{"config": "frozen", "valid_ndcg@10": fresh_teacher_valid_score(members, split, None, limit)}]
    print(scores[-1], flush=True)
    for cfg in grid:
        scores.append({"config": cfg.model_dump(), "valid_ndcg@10": fresh_teacher_valid_score(members, split, cfg,
                                                                                                limit)})  # fmt: skip
        print(scores[-1], flush=True)
    best = max(scores[1:], key=lambda s: s["valid_ndcg@10"])
    return RefreshConfig(**best["config"]), scores


def curve_table(curves: dict, kind: str) -> str:
    seeds = sorted(curves[kind])
    policies = list(curves[kind][seeds[0]])
    head = "| policy | " + " | ".join(f"{100 * r:g} %" for r in RATES) + " |"
    lines = [head, "|---|" + "---|" * len(RATES)]
    for p in policies:
        cells = []
        for r in RATES:
            vals = [curves[kind][s][p][r]["ndcg@10"] for s in seeds]
            rate = np.mean([curves[kind][s][p][r]["rate"] for s in seeds])
            cells.append(f"{np.mean(vals):.4f} ± {np.std(vals):.4f} ({100 * rate:.0f} %)")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves: dict, table: dict, path: Path, title: str) -> None:
    seeds = sorted(curves["fresh"])
    lines = {}
    for p in curves["fresh"][seeds[0]]:
        xs = [100 * np.mean([curves["fresh"][s][p][r]["rate"] for s in seeds]) for r in RATES]
        ys = [np.mean([curves["fresh"][s][p][r]["ndcg@10"] for s in seeds]) for r in RATES]
        lines[p if "list" in p else f"distilled edit, {p}"] = (xs, ys)
    refs = {name: (np.mean([r["ndcg@10"] for r in table[name]]), style)
            for name, style in (("device alone", ":"), ("teacher, fresh (upper bound)", "--"))}  # fmt: skip
    plot_curves(lines, refs, path, title, "events that ask the cloud (%)", "NDCG@10 (test period)")


def teacher_only(args, split, members: EnsembleTeacher, refresh: RefreshConfig, selection: list[dict], stem: str,
                 start: float, loadavg: tuple) -> int:  # fmt: skip
    table, versions = teacher_table(split, members, refresh, args.limit)
    meta = {
        "dataset": args.dataset, "protocol": split.protocol,
        "teacher": f"ensemble of {len(members.models)}: {args.teacher_models} × seeds {args.teacher_seeds}",
        "refresh (chosen on validation)": refresh.model_dump(), "limit_rows": args.limit,
        "loadavg_start": loadavg, "seconds": round(time.perf_counter() - start, 1),
        "command": "python " + " ".join(["benchmarks/teacher_stream.py", *sys.argv[1:]]),
    }  # fmt: skip
    notes = "\n".join([
        "Test period; the fresh teacher refreshes on the validation rows before the first test row, then",
        f"every {refresh.every_events} rows inside the test period ({len(versions)} versions).",
        "One ensemble, so no ± std.",
        "", "## Refresh settings tried on the validation period (teacher NDCG@10)", "",
        *[f"- {s['config']}: {s['valid_ndcg@10']:.4f}" for s in selection],
    ])  # fmt: skip
    title = f"Frozen vs fresh cloud teacher ({args.dataset}, test period)"
    json_path, md = write_report(Path(args.out), stem, title, table, meta, KEYS, notes)
    payload = json.loads(json_path.read_text())
    payload.update(versions=versions, selection=selection)
    atomic_write_text(json_path, json.dumps(payload, indent=2, default=float) + "\n")
    print(md.read_text())
    return 0


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
    parser.add_argument("--reuse-selection", action="store_true",
                        help="take the refresh settings chosen on validation from the existing report's JSON "
                        "(the full run's, else the --teacher-only run's)")
    parser.add_argument("--teacher-only", action="store_true", help="frozen vs fresh teacher only (no device edits)")
    parser.add_argument("--grid", default="", help="indices into the refresh grid to try (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    start, loadavg = time.perf_counter(), os.getloadavg()
    split = load_dataset_split(load_config(overrides=[f"dataset={args.dataset}",
                                                      f"data.workdir={ROOT / 'data' / 'atomic'}"]))  # fmt: skip
    members, devices = run_checkpoints(ROOT / "runs", args.dataset, args.model, ints(args.seeds),
                                       args.teacher_models.split(","), ints(args.teacher_seeds))  # fmt: skip
    stem = f"teacher_stream-{args.dataset}" + ("-teacher" if args.teacher_only else "")
    grid = [GRID[i] for i in ints(args.grid)] if args.grid else GRID
    if args.reuse_selection:
        done = [Path(args.out) / f"{name}.json" for name in (stem, f"{stem}-teacher")]  # a full run, or --teacher-only
        selection = json.loads(next(p for p in done if p.is_file()).read_text())["selection"]
        refresh = RefreshConfig(**max(selection[1:], key=lambda s: s["valid_ndcg@10"])["config"])
    else:
        refresh, selection = select_refresh(members, split, args.limit, grid)
    if args.teacher_only:
        return teacher_only(args, split, members, refresh, selection, stem, start, loadavg)
    dcfg = DistillConfig()
    res = evaluate_stream(split, devices, members, refresh, dcfg, args.top_k, args.limit)
    meta = {
        "dataset": args.dataset, "protocol": split.protocol,
        "device": f"{args.model}, seeds {sorted(devices)}",
        "teacher": f"ensemble of {len(members.models)}: {args.teacher_models} × seeds {args.teacher_seeds}",
        "refresh (chosen on validation)": refresh.model_dump(), "distill": dcfg.model_dump(),
        "limit_rows": args.limit, "top_k_list": args.top_k, "loadavg_start": loadavg,
        "seconds": round(time.perf_counter() - start, 1),
        "command": "python " + " ".join(["benchmarks/teacher_stream.py", *sys.argv[1:]]),
    }  # fmt: skip
    notes = "\n".join([
        "## Request rate (fresh teacher): NDCG@10 mean ± std over seeds (realised ask rate)", "",
        curve_table(res.curves, "fresh"), "",
        "## Request rate (frozen teacher)", "", curve_table(res.curves, "frozen"), "",
        f"![request-rate curve]({stem}_rate_curve.png)", "",
        "## Flagging the device's misses (AUROC, no edit held)", "",
        "| seed | detector | entropy |", "|---|---|---|",
        *[f"| {s} | {a['detector']:.3f} | {a['entropy']:.3f} |" for s, a in res.aurocs.items()], "",
        "## Refresh settings tried on the validation period (teacher NDCG@10)", "",
        *[f"- {s['config']}: {s['valid_ndcg@10']:.4f}" for s in selection],
    ])  # fmt: skip
    title = f"The cloud teacher over the stream ({args.dataset}, {args.model} device, {len(devices)} seeds)"
    json_path, md = write_report(Path(args.out), stem, title, res.table, meta, KEYS, notes)
    payload = json.loads(json_path.read_text())
    payload.update(curves=res.curves, aurocs=res.aurocs, versions=res.versions, selection=selection,
                   detector_weights=res.detector_weights)  # fmt: skip
    atomic_write_text(json_path, json.dumps(payload, indent=2, default=float) + "\n")
    plot(res.curves, res.table, Path(args.out) / f"{stem}_rate_curve.png", title)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
