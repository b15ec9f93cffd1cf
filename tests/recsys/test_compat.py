"""recsys.compat: the numpy aliases RecBole 1.2.1 needs, and RecBole's Config kept away from our argv."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from recsys import compat


def test_apply_restores_the_removed_numpy_aliases_and_is_idempotent():
    compat.apply()
    compat.apply()
    for old, new in compat._NUMPY_ALIASES.items():
        assert getattr(np, old) is getattr(np, new), old


def test_recbole_sees_no_program_arguments_and_ours_come_back_even_on_error(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["persona", "train", "--model=gru4rec", "train.epochs=1"])
    with compat.recbole_argv_isolated():
        assert sys.argv == ["persona"]
    assert sys.argv == ["persona", "train", "--model=gru4rec", "train.epochs=1"]
    with pytest.raises(RuntimeError, match="boom"), compat.recbole_argv_isolated():
        raise RuntimeError("boom")
    assert sys.argv[1:] == ["train", "--model=gru4rec", "train.epochs=1"]


def test_a_recbole_config_ignores_a_flag_it_would_otherwise_read(monkeypatch, ml100k_split):
    """RecBole's Config parses ``--key=value`` from sys.argv; under the guard a stray flag changes nothing."""
    from recsys.splits import recbole_config

    cfg, _ = ml100k_split
    monkeypatch.setattr(sys, "argv", ["persona", "--eval_batch_size=3"])
    rc = recbole_config("ml-100k", Path(cfg.data.workdir), cfg.data, cfg.eval)
    assert rc["eval_batch_size"] == cfg.eval.batch_size != 3
