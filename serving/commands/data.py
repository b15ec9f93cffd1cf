"""``persona prepare``: convert a registered dataset, or a user CSV, to RecBole atomic files.

It prints what was prepared: counts, the evaluation protocol (and where it came from) and the split
sizes every later command will see. An imported CSV's protocol is detected from its timestamps
(:func:`recsys.datasets.detect_protocol`) unless ``--protocol`` gives it, and recorded with the files.
"""

from __future__ import annotations

from pathlib import Path

from recsys.config import CONFIG_DIR, read_manifest, user_layers
from recsys.datasets import counts, import_csv, prepare
from serving.commands import CliError, add_common
from serving.config import AppConfig, load_app_config

PROTOCOLS = {"shift": "global time split", "order": "per-user leave-last-out"}


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
        out = import_csv(Path(args.csv), args.name, cfg.data, protocol=given)
        cfg = load_app_config(args.config, [*args.overrides, f"dataset={args.name}"])
        name = args.name
    else:
        if args.protocol is not None:
            raise CliError("--protocol goes with --csv (for a prepared dataset: data.protocol=shift|order)")
        out = prepare(cfg.dataset, cfg.data, force=args.force)
        name = cfg.dataset
    for line in summary(cfg, name, out, user_layers(args.config, args.overrides)):
        print(line)
    return 0


def _protocol_source(cfg: AppConfig, name: str, manifest: dict | None, given: dict) -> str:
    """Where ``cfg.data.protocol`` came from, in a few words."""
    if manifest is not None and cfg.data.protocol == manifest["protocol"]:
        detected = manifest["detected"]
        if manifest["protocol_source"] == "detected":
            other = "shift" if detected["protocol"] == "order" else "order"
            return f"detected: {detected['why']}; --protocol {other} overrides"
        differs = detected["protocol"] != manifest["protocol"]
        return "given" + (f"; detected {detected['protocol']}: {detected['why']}" if differs else "")
    data = given.get("data")
    if isinstance(data, dict) and data.get("protocol") is not None:
        return "given: data.protocol" + (f", over the recorded {manifest['protocol']}" if manifest else "")
    return "dataset config" if (CONFIG_DIR / "datasets" / f"{name}.yaml").is_file() else "the default"


def summary(cfg: AppConfig, name: str, out: Path, given: dict) -> list[str]:
    """A few lines: counts, the protocol and where it came from, the split sizes (RecBole's, as training sees)."""
    from recsys.splits import load_split, split_sizes

    manifest = read_manifest(out)
    users, items, rows = counts(out, name)
    titles = ""
    if manifest is not None:
        titles = "; titles: the item ids (no 'title' column)" if manifest.get("titles_are_ids") else \
            "; titles from the 'title' column"
    protocol = cfg.data.protocol
    split = split_sizes(load_split(name, out.parent, cfg.data, cfg.eval))
    how = " ".join(f"{part} {n:,} rows / {u:,} users," for part, (n, u) in split.items()).rstrip(",")
    lines = [
        f"{name}: {users:,} users, {items:,} items, {rows:,} interactions in {out}{titles}",
        f"protocol: {protocol} ({PROTOCOLS[protocol]}; {_protocol_source(cfg, name, manifest, given)})",
        f"split: {how}",
    ]
    empty = [part for part, (n, _) in split.items() if n == 0]
    if empty:
        need = "users with 3+ interactions" if protocol == "order" else "more interactions"
        lines.append(f"warning: empty {' and '.join(empty)} split: training and evaluation need {need}")
    return lines
