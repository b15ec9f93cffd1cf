"""SASRec's read-out (recsys/sasrec.py): the last-position path equals the full forward's gather."""

from __future__ import annotations

import torch

from recsys.config import ModelConfig
from recsys.models import EditableSeqRec
from recsys.sasrec import SASREC, sasrec_last, sasrec_positions


def _model() -> tuple[EditableSeqRec, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    m = ModelConfig(hidden_size=16, inner_size=32, dropout=0.0, item_side="none")
    model = EditableSeqRec("sasrec", m, 50, 10)
    lengths = torch.tensor([1, 4, 10, 7])
    seq = torch.randint(1, 50, (4, 10)) * (torch.arange(10) < lengths.view(-1, 1))
    return model, seq, lengths


def test_the_last_position_path_equals_every_position_then_a_gather_in_eval_and_train_mode():
    model, seq, lengths = _model()
    assert model.spec is SASREC
    for training in (False, True):  # eval: fused attention; train (dropout 0): RecBole's modules
        model.train(training)
        with torch.no_grad():
            full = sasrec_positions(model.encoder, seq, model.item_embeddings)[torch.arange(4), lengths - 1]
            last = sasrec_last(model.encoder, seq, lengths, model.item_embeddings)
        torch.testing.assert_close(last, full, atol=1e-5, rtol=1e-5)
