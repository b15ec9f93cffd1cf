"""``persona`` command line: the parser (one subcommand per module of :mod:`cli`) and the one-line errors.

``persona = "cli.main:main"``; ``python -m cli.main ...`` is the same (what :mod:`cli.launch` relaunches).
"""

from __future__ import annotations

import argparse
import logging
import sys

from cli import CliError
from cli import adapter as adapter_cmd
from cli import codebook as codebook_cmd
from cli import config as config_cmd
from cli import evaluate as evaluate_cmd
from cli import export as export_cmd
from cli import prepare as prepare_cmd
from cli import run as run_cmd
from cli import serve as serve_cmd
from cli import train as train_cmd
from recipes.adaptation import UnknownMethodError
from recsys.checkpoint import CheckpointError
from recsys.config import ConfigError
from recsys.datasets import CsvFormatError, DatasetError
from recsys.item_side import ItemSideError
from recsys.models import UnknownModelError

COMMANDS = [prepare_cmd, train_cmd, evaluate_cmd, run_cmd, codebook_cmd, adapter_cmd, export_cmd, serve_cmd, config_cmd]
# the recipes' and the layers' own errors about what they were asked for: one line each, exit code 2
EXPECTED_ERRORS = (CliError, ConfigError, DatasetError, CsvFormatError, CheckpointError, UnknownModelError,
                   UnknownMethodError, ItemSideError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona", description="Persona: backprop-free on-device recommender adaptation"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`persona evaluate --models pop x=1`)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as exc:
        print(f"persona {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"persona {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
