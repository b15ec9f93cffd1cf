"""``persona export``: the device's copy of each seed's base checkpoint, LLM item views folded into the item table."""

from __future__ import annotations

from pathlib import Path

from serving.commands import add_common
from serving.config import load_app_config

DEVICE_DIR = "device"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write each seed's device checkpoint (item views folded in: same scores, smaller model.pt)"
    )
    add_common(p)
    p.add_argument("--out", help=f"output dir (one seed); default <run dir>/{DEVICE_DIR}/ for every seed")
    p.set_defaults(func=run)


def run(args) -> int:
    from recsys.checkpoint import export_for_device

    cfg = load_app_config(args.config, args.overrides)
    seeds = cfg.seeds if not args.out else cfg.seeds[:1]
    for seed in seeds:
        src = cfg.run_dir(seed)
        out = export_for_device(src, Path(args.out) if args.out else src / DEVICE_DIR)
        before, after = (src / "model.pt").stat().st_size, (out / "model.pt").stat().st_size
        print(f"seed {seed}: {out} (model.pt {after:,} B; the training checkpoint's {before:,} B)")
    return 0
