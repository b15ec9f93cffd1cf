"""CLI subcommands; each module exposes ``add_parser(subparsers)`` that sets ``func`` on its parser.

A command's ``func(args) -> int`` returns the exit code; expected failures raise ``CliError`` (or a
known domain error) and are printed as one line by :mod:`serving.cli`.
"""

import argparse


class CliError(RuntimeError):
    """An expected failure: printed as one line, exit code 2."""


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and ``key=value`` overrides, shared by every command."""
    parser.add_argument("--config", help="YAML file layered over the defaults (`persona config` prints the result)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dataset=ml-latest-small train.lr=0.002")


def add_training(parser: argparse.ArgumentParser) -> None:
    """:func:`add_common` plus ``--quiet`` and ``--nproc``, for the commands that train (``train``, ``adapter``)."""
    add_common(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--nproc", type=int, help="DDP processes on this machine, relaunched under torchrun (default train.nproc)"
    )
