"""BERT4Rec as a device model (recsys/bert4rec.py): RecBole's forward read at an appended mask token,
prefix states without look-ahead, the cloze loss, the mask row kept out of scoring and through folding."""

from __future__ import annotations

import torch

from recsys.bert4rec import MASK_RATIO, ClozeLoss, bert4rec_positions
from recsys.config import ModelConfig
from recsys.item_side import ItemSide
from recsys.losses import training_loss
from recsys.models import EditableSeqRec

N_ITEMS, T = 40, 8


def _model(item_side: str = "none", side: ItemSide | None = None) -> EditableSeqRec:
    torch.manual_seed(0)
    m = ModelConfig(hidden_size=16, inner_size=32, dropout=0.0, item_side=item_side)
    return EditableSeqRec("bert4rec", m, N_ITEMS, T, side)


def _rows() -> tuple[torch.Tensor, torch.Tensor]:
    seq = torch.tensor([[3, 4, 5, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8], [9, 0, 0, 0, 0, 0, 0, 0]])
    return seq, torch.tensor([3, 8, 1])


def test_the_state_is_recboles_output_at_a_mask_token_after_the_history():
    """Short rows: RecBole's forward with the mask at position ``len``; a full row: RecBole's
    ``reconstruct_test_data`` (the first item dropped, the mask last)."""
    model = _model().eval()
    seq, lengths = _rows()
    enc = model.encoder
    with torch.no_grad():
        ours = model.user_state(seq, lengths)
        ext = torch.cat([seq, torch.zeros(3, 1, dtype=torch.long)], 1)
        ext[torch.arange(3), lengths] = enc.mask_token
        short = enc.forward(ext[[0, 2], :T])[torch.tensor([0, 1]), lengths[[0, 2]]]
        full = enc.forward(enc.reconstruct_test_data(seq[1:2], lengths[1:2]))[0, T - 1]
    torch.testing.assert_close(ours[[0, 2]], short, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1], full, atol=1e-5, rtol=1e-5)


def test_a_prefix_state_sees_no_later_item():
    """Bidirectional attention sees the future; ``position_states`` reads each prefix on its own."""
    model = _model().eval()
    seq, _ = _rows()
    later = seq.clone()
    later[1, 4:] = torch.tensor([11, 12, 13, 14])
    with torch.no_grad():
        a, b = model.position_states(seq), model.position_states(later)
        raw_a = bert4rec_positions(model.encoder, seq, model.item_embeddings)
        raw_b = bert4rec_positions(model.encoder, later, model.item_embeddings)
    assert torch.equal(a[1, :4], b[1, :4]) and not torch.allclose(a[1, 4:], b[1, 4:])
    assert not torch.allclose(raw_a[1, :4], raw_b[1, :4])  # the raw encoder output would leak the future


def test_the_cloze_loss_masks_every_window_and_trains_the_mask_row():
    model = _model().train()
    assert isinstance(training_loss(model), ClozeLoss)
    torch.manual_seed(1)
    x = torch.randint(1, N_ITEMS, (64, T))
    y = torch.randint(1, N_ITEMS, (64, T))
    y[:, 6:] = 0
    loss = training_loss(model)(x, y)
    loss.backward()
    grad = model.encoder.item_embedding.weight.grad
    assert torch.isfinite(loss) and grad[N_ITEMS].abs().sum() > 0  # the mask token's row learns
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = float(loss.detach())
    for _ in range(30):
        opt.zero_grad()
        step = training_loss(model)(x[:8], y[:8])
        step.backward()
        opt.step()
    assert float(step.detach()) < first  # it fits a small batch
    assert 0.1 < MASK_RATIO < 0.5


def test_the_mask_row_is_never_scored_and_survives_folding():
    vectors = torch.randn(N_ITEMS, 8)
    side = ItemSide(vectors, None, torch.arange(N_ITEMS) % 3 != 0)
    model = _model(item_side="fused", side=side).eval()
    seq, lengths = _rows()
    with torch.no_grad():
        scores = model.score(seq, lengths)
        folded = model.folded()
        assert scores.shape == (3, N_ITEMS) and model.item_embeddings.shape == (N_ITEMS, 16)
        assert folded.encoder.item_embedding.weight.shape == (N_ITEMS + 1, 16)
        torch.testing.assert_close(folded.score(seq, lengths), scores, atol=1e-5, rtol=1e-5)
