"""GRU4Rec's hooks (recsys/gru4rec.py) read RecBole's own forward."""

from __future__ import annotations

import torch

from recsys.config import ModelConfig
from recsys.gru4rec import GRU4REC, gru4rec_positions
from recsys.models import EditableSeqRec


def test_the_state_is_recboles_gru4rec_forward():
    torch.manual_seed(0)
    model = EditableSeqRec("gru4rec", ModelConfig(hidden_size=16, n_layers=1, item_side="none"), 50, 10).eval()
    lengths = torch.tensor([1, 4, 10, 7])
    seq = torch.randint(1, 50, (4, 10)) * (torch.arange(10) < lengths.view(-1, 1))
    with torch.no_grad():
        recbole = model.encoder.forward(seq, lengths)  # RecBole: every position, then its gather
        ours = model.user_state(seq, lengths)
        positions = gru4rec_positions(model.encoder, seq, model.item_embeddings)
    assert model.spec is GRU4REC and GRU4REC.causal and GRU4REC.last is None
    torch.testing.assert_close(ours, recbole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(positions[torch.arange(4), lengths - 1], recbole, atol=1e-6, rtol=1e-5)
