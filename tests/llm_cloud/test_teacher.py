"""The cloud teacher: an ensemble of real (tiny) checkpoints, loaded as the device loads its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_cloud.teacher import EnsembleTeacher
from recsys.checkpoint import save_checkpoint
from recsys.config import ModelConfig
from recsys.models import EditableSeqRec, score_with_edit

D, N_ITEMS, T = 16, 60, 10
TOKENS = np.array(["[PAD]"] + [f"i{i}" for i in range(1, N_ITEMS)])


def tiny_model(name: str, seed: int, n_items: int = N_ITEMS) -> EditableSeqRec:
    torch.manual_seed(seed)
    m = ModelConfig(hidden_size=D, inner_size=32, n_layers=1, head_layers=2, dropout=0.0, item_side="none")
    model = EditableSeqRec(name, m, n_items, T)
    with torch.no_grad():
        model.encoder.item_embedding.weight.normal_(0, 1.0)  # peaked distributions, as a trained model's
        for layer in model.head.layers:
            layer.weight.normal_(0, 0.2)
    return model.eval()


def histories(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(2, T + 1, (n,), generator=g)
    seq = torch.randint(1, N_ITEMS, (n, T), generator=g)
    seq[torch.arange(T).unsqueeze(0) >= length.unsqueeze(1)] = 0  # right padding, as RecBole's rows
    return seq, length


def checkpoint(tmp_path, model: EditableSeqRec, name: str, tokens: np.ndarray = TOKENS):
    return save_checkpoint(tmp_path / name, model, "toy", tokens)


def test_one_member_is_that_members_log_softmax(tmp_path):
    model = tiny_model("sasrec", 0)
    teacher = EnsembleTeacher.load([checkpoint(tmp_path, model, "a")])
    seq, length = histories()
    expected = torch.log_softmax(score_with_edit(model, seq, length), dim=-1)
    got = teacher.log_probs(seq, length)
    assert got.shape == (len(seq), N_ITEMS)
    assert torch.equal(torch.isinf(got[:, 0]), torch.ones(len(seq), dtype=torch.bool))  # padding id
    assert torch.allclose(got[:, 1:], expected[:, 1:], atol=1e-5)


def test_members_are_averaged_in_log_space_and_renormalised(tmp_path):
    a, b = tiny_model("sasrec", 0), tiny_model("gru4rec", 1)
    teacher = EnsembleTeacher.load([checkpoint(tmp_path, a, "a"), checkpoint(tmp_path, b, "b")])
    seq, length = histories()
    mean = (torch.log_softmax(score_with_edit(a, seq, length), -1) + torch.log_softmax(score_with_edit(b, seq, length),
                                                                                          -1)) / 2
    got = teacher.log_probs(seq, length)
    assert torch.allclose(got[:, 1:], torch.log_softmax(mean, -1)[:, 1:], atol=1e-5)
    assert torch.allclose(got.exp().sum(-1), torch.ones(len(seq)), atol=1e-5)
    assert torch.equal(got.argsort(-1, descending=True)[:, :10], mean.argsort(-1, descending=True)[:, :10])


def test_members_with_another_vocabulary_are_refused_by_name(tmp_path):
    a = checkpoint(tmp_path, tiny_model("sasrec", 0), "a")
    fewer = checkpoint(tmp_path, tiny_model("sasrec", 1, n_items=N_ITEMS - 1), "fewer", TOKENS[:-1])
    renamed = checkpoint(tmp_path, tiny_model("sasrec", 2), "renamed", np.array([*TOKENS[:-1], "other"]))
    for bad in (fewer, renamed):
        with pytest.raises(ValueError, match=str(bad)):
            EnsembleTeacher.load([a, bad])
    teacher = EnsembleTeacher.load([a])
    teacher.check_serves(TOKENS, "the device")
    with pytest.raises(ValueError, match="the device"):
        teacher.check_serves(TOKENS[:-1], "the device")


def test_batched_log_probs_are_the_log_probs_of_each_row(tmp_path):
    teacher = EnsembleTeacher.load([checkpoint(tmp_path, tiny_model("sasrec", 0), "a"),
                                    checkpoint(tmp_path, tiny_model("gru4rec", 1), "b")])  # fmt: skip
    seq, length = histories(11)
    assert torch.allclose(teacher.log_probs_batched(seq, length, batch=4), teacher.log_probs(seq, length), atol=1e-6)
