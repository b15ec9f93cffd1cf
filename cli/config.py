"""``persona config``: print the effective config (the typed defaults with every layer applied) as YAML."""

from __future__ import annotations

from cli import add_common
from recsys.config import CONFIG_DIR, dump_config, user_file_path
from serving.config import load_app_config


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config (defaults + layers + overrides) as YAML")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = load_app_config(args.config, args.overrides)
    layers = [p for p in (CONFIG_DIR / "datasets" / f"{cfg.dataset}.yaml", CONFIG_DIR / "models" / f"{cfg.model}.yaml")
              if p.is_file()]  # fmt: skip
    layers += [user_file_path(args.config)] if args.config else []
    layers += ["key=value"] if args.overrides else []
    print(" → ".join(["# persona config: typed defaults", *map(str, layers)]))
    print(dump_config(cfg), end="")
    return 0
