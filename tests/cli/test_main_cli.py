"""``persona`` (:mod:`cli.main`) end to end in a subprocess: every command's help, and a bad config field as one
line with exit code 2 (each command's own errors: ``tests/cli/test_<command>_cli.py``)."""

from __future__ import annotations

import pytest

from cli.main import COMMANDS, build_parser
from tests.conftest import one_line_error, persona


def test_bad_config_field_is_named():
    one_line_error(persona("prepare", "train.lr=-1"), "train.lr")
    one_line_error(persona("prepare", "trian.lr=1"), "trian")


@pytest.mark.parametrize("cmd", ["prepare", "train", "evaluate", "run", "export"])
def test_help(cmd):
    assert persona(cmd, "--help").returncode == 0


def test_one_module_per_command():
    """Each subcommand is its module's (``cli/<command>.py``), registered once."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == [m.__name__.removeprefix("cli.") for m in COMMANDS]
