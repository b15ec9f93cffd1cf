"""serving.artifacts: which checkpoint a service serves, the error that says what to run when there is none, and what
it loads (the model, its item tokens, their titles from the dataset's item file)."""

from __future__ import annotations

import logging

import pytest
import torch

from recsys.checkpoint import CheckpointError, save_checkpoint
from recsys.models import EditableSeqRec
from serving.artifacts import checkpoint_dir, load_artifacts, require_checkpoint
from serving.config import load_app_config


def _cfg(tmp_path, workdir, *more):
    return load_app_config(overrides=[f"output_dir={tmp_path / 'runs'}", f"data.workdir={workdir}",
                                      "model_params.item_side=none", "model_params.hidden_size=16",
                                      "model_params.inner_size=32", *more])


def _save(cfg, directory, tokens):
    torch.manual_seed(0)
    model = EditableSeqRec(cfg.model, cfg.model_params, len(tokens), cfg.data.max_seq_len)
    return save_checkpoint(directory, model, "ml-100k", tokens), model


def test_the_served_checkpoint_is_serve_checkpoint_else_the_main_jobs_seed(tmp_path):
    cfg = _cfg(tmp_path, tmp_path, "serve.seed=2")
    assert checkpoint_dir(cfg) == tmp_path / "runs" / "ml-100k" / "sasrec" / "seed2" == cfg.run_dir(2)
    assert checkpoint_dir(_cfg(tmp_path, tmp_path, f"serve.checkpoint={tmp_path / 'mine'}")) == tmp_path / "mine"
    with pytest.raises(CheckpointError, match=r"no trained model at .*seed2: run `make run` first"):
        require_checkpoint(cfg)


def test_load_artifacts_brings_the_model_its_tokens_and_their_titles(ml100k_split, workdir, tmp_path):
    _, split = ml100k_split
    cfg = _cfg(tmp_path, workdir)
    directory, model = _save(cfg, cfg.run_dir(0), split.item_tokens)
    art = load_artifacts(cfg)
    assert art.directory == directory == require_checkpoint(cfg) and art.meta.dataset == "ml-100k"
    assert list(art.tokens) == list(split.item_tokens) and len(art.titles) == split.n_items
    assert art.titles[0] is None  # the padding id
    toy_story = list(art.tokens).index("1")
    assert art.titles[toy_story] == "Toy Story"
    assert all(torch.equal(a, b) for a, b in zip(art.model.state_dict().values(), model.state_dict().values()))


def test_without_the_item_file_rankings_carry_no_titles(ml100k_split, tmp_path, caplog):
    _, split = ml100k_split
    cfg = _cfg(tmp_path, tmp_path / "no-data")
    _save(cfg, cfg.run_dir(0), split.item_tokens)
    with caplog.at_level(logging.WARNING, logger="serving.artifacts"):
        art = load_artifacts(cfg)
    assert art.titles == [None] * split.n_items and "rankings carry no titles" in caplog.text
