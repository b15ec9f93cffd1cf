"""``persona prepare``: convert a registered dataset, or a user CSV, to RecBole atomic files.

It prints what was prepared: counts, the evaluation protocol (and where it came from) and the split
sizes every later command will see. An imported CSV's protocol is detected from its timestamps
(:func:`recsys.datasets.detect_protocol`) unless ``--protocol`` gives it, and recorded with the files.
"""

from __future__ import annotations

from pathlib import Path

from cli import CliError, add_common
from recipes.base import prepare
from recipes.data import PROTOCOLS, import_user_csv, summary
from recsys.config import user_layers
from serving.config import load_app_config


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="convert a dataset (or --csv FILE --name NAME) to atomic files")
    add_common(p)
    p.add_argument("--csv", help="a user CSV with header user,item,timestamp[,title][,text columns]")
    p.add_argument("--name", help="dataset name for --csv (then use dataset=NAME)")
    p.add_argument("--protocol", metavar="shift|order",
                   help="--csv: the evaluation protocol, instead of the one detected from the timestamps")
    p.add_argument("--force", action="store_true", help="convert again even if already converted")
    p.set_defaults(func=run)


def _given_protocol(args) -> str | None:
    """``--protocol``, else ``data.protocol`` from the user's --config / key=value layers (None: neither)."""
    data = user_layers(args.config, args.overrides).get("data")
    layered = data.get("protocol") if isinstance(data, dict) else None
    if args.protocol is not None and args.protocol not in PROTOCOLS:
        raise CliError(f"unknown --protocol '{args.protocol}' (shift | order)")
    if args.protocol and layered and args.protocol != layered:
        raise CliError(f"--protocol {args.protocol} contradicts data.protocol={layered}")
    return args.protocol or layered


def run(args) -> int:
    cfg = load_app_config(args.config, args.overrides)
    if args.csv:
        if not args.name:
            raise CliError("--csv needs --name")
        given = _given_protocol(args)
        out = import_user_csv(Path(args.csv), args.name, cfg, protocol=given)
        cfg = load_app_config(args.config, [*args.overrides, f"dataset={args.name}"])
        name = args.name
    else:
        if args.protocol is not None:
            raise CliError("--protocol goes with --csv (for a prepared dataset: data.protocol=shift|order)")
        out = prepare(cfg, force=args.force)
        name = cfg.dataset
    for line in summary(cfg, name, out, user_layers(args.config, args.overrides)):
        print(line)
    return 0
