"""``persona prepare``: convert a registered dataset, or a user CSV, to RecBole atomic files."""

from __future__ import annotations

from pathlib import Path

from recsys.datasets import import_csv, prepare
from serving.commands import add_common
from serving.config import load_app_config


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="convert a dataset (or --csv FILE --name NAME) to atomic files")
    add_common(p)
    p.add_argument("--csv", help="a user CSV with header user,item,timestamp[,text columns]")
    p.add_argument("--name", help="dataset name for --csv")
    p.add_argument("--force", action="store_true", help="convert again even if already converted")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = load_app_config(args.config, args.overrides)
    if args.csv:
        from serving.commands import CliError

        if not args.name:
            raise CliError("--csv needs --name")
        out = import_csv(Path(args.csv), args.name, cfg.data)
    else:
        out = prepare(cfg.dataset, cfg.data, force=args.force)
    print(f"{out}")
    return 0
