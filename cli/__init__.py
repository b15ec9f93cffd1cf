"""The ``persona`` command line: :mod:`cli.main` (the parser and the one-line errors) and one module per
subcommand (``prepare``, ``train``, ``evaluate``, ``run``, ``codebook``, ``adapter``, ``export``, ``serve``,
``config``; :mod:`cli.launch` relaunches one under ``torchrun``). The top of the import graph:
``cli → serving, recipes → llm_cloud, codebook → recsys``; nothing imports ``cli``.

Each command module exposes ``add_parser(subparsers)`` that sets ``func`` on its parser. A command's
``func(args) -> int`` returns the exit code; expected failures raise ``CliError`` (or a known domain
error) and are printed as one line by :mod:`cli.main`. Commands are thin: arguments → config → a recipe
(which validates what it is asked for) → a summary.
"""

import argparse

TRAIN_HINT = "run `persona train` (and `persona codebook`) first"  # after a missing checkpoint or codebook


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


def comma_list(text: str) -> list[str]:
    """``--models`` / ``--methods``: the comma-separated names, blanks dropped."""
    return [n.strip() for n in text.split(",") if n.strip()]
