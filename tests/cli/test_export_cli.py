"""``persona export`` (:mod:`cli.export`): its one-line errors (an export that works: ``test_run_cli.py``;
the ONNX export: ``tests/recsys/test_onnx_export.py``)."""

from __future__ import annotations

import argparse

import pytest

from cli.export import _positive
from tests.conftest import one_line_error, persona


def test_export_without_checkpoint_says_so(tmp_path):
    one_line_error(persona("export", f"output_dir={tmp_path}"), "no complete checkpoint")


def test_top_k_is_a_positive_integer():
    assert _positive("100") == 100
    for text in ("0", "-3", "ten"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a positive integer"):
            _positive(text)
