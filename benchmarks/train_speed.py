"""Training speed to convergence, previous code vs this code, side by side in one run.

For each case (ml-100k SASRec and GRU4Rec, amazon-beauty SASRec, the ml-100k adapter) both versions
train seed 0 with their own default config in fresh processes on this machine, one after the other:
the previous code from a git revision (checked out into a temporary worktree and imported first on
``PYTHONPATH``), this code from the working tree. Reported per version: wall seconds per epoch
(training + validation), training seconds per epoch, training positions (loss terms) per second,
epochs to the best validation score and that score, and whether the run stopped by itself (patience)
or hit this script's cap (``--max-seconds`` per run: then "epochs to best" is a lower bound, marked
≥). Beside them: a FLOP estimate of one epoch's forward + backward matmuls and this machine's measured
matmul rate, so "seconds per epoch" can be read against the floor. Prints a table and writes
``reports/benchmarks/train_speed.{json,md}``.

    python benchmarks/train_speed.py [--old REV] [--cases ml100k-sasrec,...] [--max-seconds 600]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OLD = "83593ef"  # main before the shared loop and the speed work (issue 11)
CASES = {
    "ml100k-sasrec": ["dataset=ml-100k", "model=sasrec"],
    "ml100k-gru4rec": ["dataset=ml-100k", "model=gru4rec"],
    "beauty-sasrec": ["dataset=amazon-beauty", "model=sasrec"],
    "ml100k-adapter": ["dataset=ml-100k", "model=sasrec"],
}


# ----------------------------------------------------------------------------------------- worker
def _base_flops(cfg, inputs, targets, n_items: int) -> float:
    """Forward + backward (≈ 3× forward) matmul FLOPs of one epoch of all-position training."""
    m = cfg.model_params
    d, windows, t = m.hidden_size, inputs.shape[0], inputs.shape[1]
    padded, valid = windows * t, int((targets > 0).sum())
    if cfg.model == "sasrec":
        per_pos = m.n_layers * (4 * 2 * d * d + 2 * 2 * d * m.inner_size + 2 * 2 * t * d)
    else:  # GRU: 3 gates, input and hidden projections, plus the output dense layer
        per_pos = m.n_layers * 2 * 2 * 3 * d * d + 2 * d * d
    head = m.head_layers * 2 * d * d
    return 3.0 * (padded * per_pos + valid * (head + 2 * d * n_items))


def _adapter_flops(cfg, n_samples: int, n_items: int, d: int, n_layers: int) -> float:
    a = cfg.adapter
    dz, w = a.code_dim, a.window
    per = w * 2 * 3 * (d * dz + dz * dz) + n_layers * (2 * dz * d * d + 2 * d * d) + 2 * d * n_items
    return 3.0 * n_samples * per


def worker(args) -> None:
    """One training run of whichever code is first on ``sys.path``; prints one JSON line."""
    import torch

    from recsys.experiment import load_dataset_split
    from serving.config import load_app_config

    cfg = load_app_config(overrides=[*CASES[args.case], "seeds=[0]", *args.overrides])
    torch.set_num_threads(cfg.train.threads)
    split = load_dataset_split(cfg)
    if args.case.endswith("adapter"):
        from llm_cloud.adapter_train import train_adapter
        from recsys.checkpoint import load_checkpoint

        base, _, _ = load_checkpoint(Path(args.base_dir))
        table = None
        from recsys import run_layout

        cb = run_layout.codebook_dir(Path(args.base_dir).parents[2], Path(args.base_dir).parents[1].name)
        if cfg.adapter.use_codebook and (cb / "meta.json").is_file():
            from llm_cloud.artifacts import code_table_for

            table = code_table_for(cb, split.item_tokens)
        acfg = cfg.adapter.model_copy(update={"time_budget_s": args.max_seconds})
        t0 = time.perf_counter()
        res = train_adapter(base, split, acfg, 0, table, cfg.eval.batch_size, False)
        wall = time.perf_counter() - t0
        n = min(len(res.samples), acfg.samples_per_epoch or len(res.samples))
        positions = n
        flops = _adapter_flops(cfg, n, split.n_items, base.head.dim, len(base.head.layers))
        train_s = None
    else:
        from recsys.train import make_windows, train_model

        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"time_budget_s": args.max_seconds})})
        inputs, targets = make_windows(split.train_sequences, cfg.data.max_seq_len)
        positions = int((targets > 0).sum())
        flops = _base_flops(cfg, inputs.numpy(), targets.numpy(), split.n_items)
        t0 = time.perf_counter()
        res = train_model(split, cfg, 0, progress=False)
        wall = time.perf_counter() - t0
        train_s = sum(h["train_s"] for h in res.history) / len(res.history)
    metric = cfg.eval.valid_metric
    epochs = len(res.history)
    capped = epochs < cfg.train.epochs and wall >= args.max_seconds if args.max_seconds else False
    stopped = "cap" if capped else ("epochs" if epochs == (cfg.adapter.epochs if "adapter" in args.case
                                                          else cfg.train.epochs) else "patience")
    print(json.dumps({
        "epochs_run": epochs, "best_epoch": res.best_epoch, "best_valid": res.best_valid[metric],
        "wall_s": wall, "wall_per_epoch": wall / epochs, "train_per_epoch": train_s,
        "positions": positions, "flops": flops, "stopped": stopped,
        "code": str(Path(sys.modules["recsys"].__file__).parents[1]),
    }))


# ----------------------------------------------------------------------------------------- driver
def matmul_gflops(threads: int) -> float:
    """This machine's float32 matmul rate on the logits' shape ([8192, 64] × [64, 1682])."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(8192, 64), torch.randn(64, 1682)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * 8192 * 64 * 1682 / best / 1e9


def _run(code_root: Path, case: str, args, overrides: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    env.pop("PERSONA_CONFIG_DIR", None)
    if (code_root / "configs").is_dir():  # older revisions kept the config layers at the top level
        env["PERSONA_CONFIG_DIR"] = str(code_root / "configs")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--worker", "--case", case,
           "--max-seconds", str(args.max_seconds), "--base-dir", str(args.base_dir), *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{case} ({code_root}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(r: dict, gflops: float) -> list[str]:
    ep = f"{'≥' if r['stopped'] == 'cap' else ''}{r['best_epoch'] + 1}"
    train = "–" if r["train_per_epoch"] is None else f"{r['train_per_epoch']:.2f}"
    pos_s = r["positions"] / (r["train_per_epoch"] or r["wall_per_epoch"])
    return [f"{r['wall_per_epoch']:.2f}", train, f"{pos_s:,.0f}", ep, f"{r['best_valid']:.4f}", r["stopped"],
            f"{r['wall_s']:.0f}"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default=DEFAULT_OLD, help="git revision of the previous code")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--max-seconds", type=float, default=600.0, help="cap per training run (then ≥ epochs)")
    p.add_argument("--base-dir", default="runs/ml-100k/sasrec/seed0", help="base checkpoint for the adapter case")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    threads = [f"train.threads={args.threads}"]
    if "ml100k-adapter" in cases and not (ROOT / args.base_dir / "model.yaml").is_file():
        raise SystemExit(f"{args.base_dir} has no checkpoint: run `make run` (or `persona train seeds=[0]`) first")
    gflops = matmul_gflops(args.threads)
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        old_root = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_root), args.old], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for case in cases:
                res = {}
                for name, root in (("old", old_root), ("new", ROOT)):
                    print(f"{case}: {name} ...", flush=True)
                    res[name] = _run(root, case, args, [*threads, *args.overrides])
                raw[case] = res
                o, n = res["old"], res["new"]
                floor = n["flops"] / (gflops * 1e9)
                rows.append([case, f"{n['flops'] / 1e9:.0f}", f"{floor:.2f}", *_fmt(o, gflops), *_fmt(n, gflops),
                             f"{o['wall_per_epoch'] / n['wall_per_epoch']:.1f}×",
                             f"{o['wall_s'] / n['wall_s']:.1f}×"])
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_root)], cwd=ROOT, check=False)
    head = ["case", "GFLOP/epoch", "floor s/epoch",
            "old s/epoch", "old train s", "old pos/s", "old epochs to best", "old best valid", "old stop",
            "old total s",
            "new s/epoch", "new train s", "new pos/s", "new epochs to best", "new best valid", "new stop",
            "new total s", "s/epoch ratio", "time-to-best ratio"]
    lines = [f"Previous code: `{args.old}`; this code: working tree. {args.threads} threads, seed 0, each version's "
             f"default config, cap {args.max_seconds:.0f} s per run. Matmul rate measured here: {gflops:.1f} GFLOP/s "
             "(floor = FLOP estimate / that rate).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print("\n" + table)
    out = ROOT / "reports" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.md").write_text("# Training speed: previous vs this code\n\n" + table + "\n")
    (out / "train_speed.json").write_text(json.dumps({"old": args.old, "gflops": gflops, "threads": args.threads,
                                                      "max_seconds": args.max_seconds, "cases": raw}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
