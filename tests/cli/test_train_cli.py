"""``persona train`` (:mod:`cli.train`): an unknown model or a missing side file as one line, before training."""

from __future__ import annotations

import argparse

import pytest

from cli.main import main
from cli.train import model_configs, run_train
from recsys.models import UnknownModelError
from tests.conftest import needs_mirror, one_line_error, persona


def test_unknown_model_is_named(tmp_path):
    one_line_error(persona("train", "model=nope4rec", f"data.workdir={tmp_path}"), "unknown model 'nope4rec'")


def test_the_model_registry_checks_the_name_before_any_data(tmp_path):
    """The recipe's check (``recipes.base.check_models``: the registry's ``get_spec``), before the data or torchrun."""
    args = argparse.Namespace(config=None, overrides=["model=nope4rec", f"data.workdir={tmp_path}"], nproc=2,
                              quiet=True)
    with pytest.raises(UnknownModelError, match="unknown model 'nope4rec'"):
        run_train(args)
    assert not any(tmp_path.iterdir())
    cfgs = model_configs(argparse.Namespace(config=None, overrides=[]), ["gru4rec", "sasrec"])
    assert [c.model for c in cfgs] == ["gru4rec", "sasrec"]


def test_nproc_below_one_is_refused(capsys):
    assert main(["train", "--nproc", "0"]) == 2
    assert "persona train: error: --nproc must be >= 1, got 0" in capsys.readouterr().err


@needs_mirror
def test_train_without_side_file_says_what_to_run(tmp_path):
    proc = persona("train", "model=sasrec", "model_params.item_side=fused", f"data.item_side={tmp_path / 'no.npz'}",
                   f"output_dir={tmp_path}", f"data.workdir={tmp_path / 'a'}")
    one_line_error(proc, "no item side file", "persona codebook")
