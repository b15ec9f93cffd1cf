"""Checkpoints: ``model.pt`` (a state_dict) + ``model.yaml`` + ``items.txt``, loaded back to the same scores; a
reader that loads each directory once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.checkpoint import CheckpointError, checkpoint_reader, load_checkpoint, save_checkpoint
from recsys.config import ModelConfig
from recsys.models import EditableSeqRec, score_with_edit

TOKENS = np.array(["[PAD]"] + [f"i{i}" for i in range(1, 30)])


def saved(tmp_path, name: str = "ckpt", seed: int = 0):
    torch.manual_seed(seed)
    m = ModelConfig(hidden_size=16, inner_size=32, n_layers=1, head_layers=2, dropout=0.0, item_side="none")
    model = EditableSeqRec("sasrec", m, len(TOKENS), 8).eval()
    return model, save_checkpoint(tmp_path / name, model, "toy", TOKENS)


def test_a_checkpoint_loads_back_to_the_same_scores_and_vocabulary(tmp_path):
    model, directory = saved(tmp_path)
    loaded, meta, tokens = load_checkpoint(directory)
    seq, length = torch.tensor([[3, 5, 7, 0, 0, 0, 0, 0]]), torch.tensor([3])
    assert torch.allclose(score_with_edit(loaded, seq, length), score_with_edit(model, seq, length), atol=1e-6)
    assert (meta.model, meta.dataset, meta.n_items) == ("sasrec", "toy", len(TOKENS))
    assert list(tokens) == list(TOKENS)
    with pytest.raises(CheckpointError, match="model.yaml missing"):
        load_checkpoint(tmp_path / "nothing")


def test_the_reader_loads_each_directory_once_by_its_resolved_path(tmp_path):
    _, a = saved(tmp_path, "a", 0)
    _, b = saved(tmp_path, "b", 1)
    read = checkpoint_reader()
    first = read(a)
    assert read(tmp_path / "b" / ".." / "a")[0] is first[0]  # the same directory: the same model
    assert read(b)[0] is not first[0]
    assert checkpoint_reader()(a)[0] is not first[0]  # a new reader (a new build) loads afresh
