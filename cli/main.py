"""``persona`` command line: one subcommand per pipeline step."""

from __future__ import annotations

import argparse
import logging
import sys

from recsys.checkpoint import CheckpointError
from recsys.config import ConfigError
from recsys.datasets import CsvFormatError, DatasetError
from recsys.item_side import ItemSideError
from recsys.models import UnknownModelError
from serving.commands import CliError
from serving.commands import adapter as adapter_cmd
from serving.commands import codebook as codebook_cmd
from serving.commands import config as config_cmd
from serving.commands import data as data_cmd
from serving.commands import export as export_cmd
from serving.commands import serve as serve_cmd
from serving.commands import train as train_cmd

COMMANDS = [data_cmd, train_cmd, codebook_cmd, adapter_cmd, export_cmd, serve_cmd, config_cmd]
EXPECTED_ERRORS = (CliError, ConfigError, DatasetError, CsvFormatError, CheckpointError, UnknownModelError,
                   ItemSideError)


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
