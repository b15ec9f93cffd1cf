"""``persona prepare`` (:mod:`cli.prepare`): bad datasets and CSVs as one-line errors (a good CSV:
``tests/serving/test_own_data.py``)."""

from __future__ import annotations

import argparse

import pytest

from cli import CliError
from cli.prepare import _given_protocol
from tests.conftest import one_line_error, persona


def test_unknown_dataset(tmp_path):
    one_line_error(persona("prepare", "dataset=ml-20m", f"data.workdir={tmp_path}"), "unknown dataset 'ml-20m'")


def test_missing_mirror(tmp_path):
    proc = persona("prepare", f"data.mirror={tmp_path / 'nope'}", f"data.workdir={tmp_path}")
    one_line_error(proc, "data mirror directory not found", "nope")


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ("user,item\nu,i\n", [], "missing column 'timestamp'"),
        ("", [], "empty file"),
        ("user,item,timestamp\nu,i,monday\nu,j,tuesday\n", [], "column 'timestamp' line 2: not a number"),
        ("user,item,timestamp\nu,i,0\nu,j,1\n", ["--protocol", "time"], "unknown --protocol 'time'"),
    ],
)
def test_malformed_csv(tmp_path, content, extra, message):
    """Synthetic bad CSVs (and a bad --protocol): one-line error, exit 2, nothing written."""
    csv = tmp_path / "x.csv"
    csv.write_text(content)
    proc = persona("prepare", "--csv", str(csv), "--name", "mine", *extra, f"data.workdir={tmp_path / 'atomic'}")
    one_line_error(proc, message)
    assert not (tmp_path / "atomic" / "mine").exists()


def test_protocol_flag_and_layer():
    """``--protocol`` or ``data.protocol`` from the user's layers gives the protocol; the two may not disagree."""
    def given(protocol, *overrides):
        return _given_protocol(argparse.Namespace(config=None, overrides=list(overrides), protocol=protocol))

    assert given(None) is None
    assert given("order") == "order" and given(None, "data.protocol=shift") == "shift"
    assert given("shift", "data.protocol=shift") == "shift"
    with pytest.raises(CliError, match="--protocol order contradicts data.protocol=shift"):
        given("order", "data.protocol=shift")
