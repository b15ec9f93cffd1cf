"""``persona export``: the device's copy of each seed's base checkpoint, LLM item views folded into the item table.

``--format state_dict`` (default) writes a torch checkpoint; ``--format onnx`` the graphs the torch-free
runtime runs (:mod:`recsys.onnx_export`, docs/device_runtime.md), each checked against the torch model on
every test row of the dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import CliError, add_common
from recsys import run_layout
from serving.config import load_app_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write each seed's device checkpoint (item views folded in: same scores, smaller model.pt)"
    )
    add_common(p)
    p.add_argument("--format", choices=["state_dict", "onnx"], default="state_dict",
                   help="state_dict: a torch checkpoint; onnx: graphs for onnxruntime, checked on the test rows")
    p.add_argument("--top-k", type=_positive, default=None, help="onnx: the ranker's top-k width (default 100)")
    default = f"<run dir>/{run_layout.DEVICE_DIR}/ ({run_layout.ONNX_DIR}/)"
    p.add_argument("--out", help=f"output dir (one seed); default {default} for every seed")
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return int(text)


def run(args) -> int:
    cfg = load_app_config(args.config, args.overrides)
    seeds = cfg.seeds if not args.out else cfg.seeds[:1]
    if args.format == "onnx":
        return _run_onnx(cfg, seeds, args)
    from recsys.checkpoint import export_for_device

    for seed in seeds:
        src = cfg.run_dir(seed)
        out = export_for_device(src, Path(args.out) if args.out else run_layout.device_dir(src))
        before, after = (src / "model.pt").stat().st_size, (out / "model.pt").stat().st_size
        print(f"seed {seed}: {out} (model.pt {after:,} B; the training checkpoint's {before:,} B)")
    return 0


def _run_onnx(cfg, seeds: list[int], args) -> int:
    from recsys.checkpoint import load_checkpoint
    from recsys.experiment import load_dataset_split
    from recsys.onnx_export import OnnxExportOptions, check_export, export_onnx

    options = OnnxExportOptions() if args.top_k is None else OnnxExportOptions(top_k=args.top_k)
    rows = load_dataset_split(cfg).eval_rows("test")
    for seed in seeds:
        src = cfg.run_dir(seed)
        model, meta, tokens = load_checkpoint(src)
        out = Path(args.out) if args.out else run_layout.onnx_dir(src)
        out = export_onnx(model, out, tokens, meta.dataset, options)
        check = check_export(model, out, rows["item_id_list"], rows["item_length"])
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        print(f"seed {seed}: {out} ({size:,} B in all); ONNX vs torch on the test split: {check.summary()}")
        if not check.ok:
            raise CliError(f"seed {seed}: the ONNX export differs from the torch model ({check.summary()})")
    return 0
