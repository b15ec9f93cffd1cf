"""One smoke test per registered model, plus the editing contract of the head."""

from __future__ import annotations

import pytest
import torch

from recsys.config import ModelConfig
from recsys.models import MODELS, EditableSeqRec, HeadEdit, UnknownModelError, get_spec, score_with_edit
from recsys.train import make_windows, next_item_loss


def _id_only(**kw) -> ModelConfig:
    return ModelConfig(item_side="none", **kw)  # ID-only (side views: test_item_side.py)


def _batch(n_items=60, batch=5, max_len=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, 4, 12, 7, 2][:batch])
    seq = torch.zeros(batch, max_len, dtype=torch.long)
    for i, n in enumerate(lengths):
        seq[i, :n] = torch.randint(1, n_items, (int(n),), generator=g)
    return seq, lengths


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_smoke_train_step_and_score(name):
    torch.manual_seed(0)
    model = EditableSeqRec(name, _id_only(hidden_size=16, inner_size=32), n_items=60, max_seq_len=12)
    seqs = [torch.randint(1, 60, (n,)).numpy() for n in (5, 20, 3)]
    x, y = make_windows(seqs, 12)
    loss = next_item_loss(model, x, y)
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.item_embedding.weight.grad is not None
    seq, lengths = _batch()
    scores = score_with_edit(model, seq, lengths)
    assert scores.shape == (5, 60) and torch.isinf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zero_edit_reproduces_base_scores_exactly_and_nonzero_changes_them(name):
    torch.manual_seed(1)
    model = EditableSeqRec(name, _id_only(hidden_size=16, inner_size=32), n_items=60, max_seq_len=12)
    for layer in model.head.layers:  # a trained-looking head, not the zero-initialised one
        torch.nn.init.normal_(layer.weight, std=0.3)
    seq, lengths = _batch()
    base = score_with_edit(model, seq, lengths)
    zero = score_with_edit(model, seq, lengths, HeadEdit.zeros(2, 16, batch=5))
    assert torch.equal(base, zero)
    edit = HeadEdit.zeros(2, 16, batch=5)
    edit.dW[0][2] = 0.5  # only sample 2 is edited
    edited = score_with_edit(model, seq, lengths, edit)
    assert not torch.equal(edited[2], base[2])
    assert torch.equal(edited[[0, 1, 3, 4]], base[[0, 1, 3, 4]])


def test_edit_is_clipped_and_matches_explicit_weights():
    torch.manual_seed(2)
    model = EditableSeqRec("sasrec", _id_only(hidden_size=8, inner_size=16), n_items=30, max_seq_len=6)
    for layer in model.head.layers:
        torch.nn.init.normal_(layer.weight, std=0.3)
    h = torch.randn(3, 8)
    dW = [torch.randn(3, 8, 8) * 5, torch.randn(3, 8, 8) * 5]
    db = [torch.randn(3, 8) * 5, torch.randn(3, 8) * 5]
    got = model.head(h, HeadEdit(dW, db, clip=0.1))
    (w1, b1), (w2, b2) = model.head.anchors()
    for i in range(3):
        x = torch.tanh(h[i] @ (w1 + dW[0][i].clamp(-0.1, 0.1)).T + b1 + db[0][i].clamp(-0.1, 0.1))
        q = h[i] + x @ (w2 + dW[1][i].clamp(-0.1, 0.1)).T + b2 + db[1][i].clamp(-0.1, 0.1)
        assert torch.allclose(got[i], q, atol=1e-5)
    shared = model.head(h, HeadEdit([dW[0][0], None], [None, db[1][0]], clip=0.1))  # one edit for the batch
    assert shared.shape == (3, 8)


def test_edits_build_no_autograd_graph():
    model = EditableSeqRec("gru4rec", _id_only(hidden_size=8), n_items=30, max_seq_len=6)
    seq, lengths = _batch(n_items=30, max_len=6, batch=2)
    lengths = lengths.clamp(max=6)
    edit = HeadEdit([torch.randn(2, 8, 8, requires_grad=True)] * 2, [torch.randn(2, 8, requires_grad=True)] * 2)
    scores = score_with_edit(model, seq, lengths, edit)
    assert scores.grad_fn is None and not scores.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_unknown_model_name():
    with pytest.raises(UnknownModelError, match="unknown model 'caser'"):
        get_spec("caser")


@pytest.mark.parametrize("name", sorted(n for n, spec in MODELS.items() if spec.causal))
def test_trailing_padding_changes_neither_states_nor_loss(name):
    """Causal models drop trailing padding (user_state, the training loss): the results equal the padded ones
    (BERT4Rec's cloze loss: tests/recsys/test_bert4rec.py)."""
    from recsys.losses import PositionLossSum

    torch.manual_seed(2)
    model = EditableSeqRec(name, _id_only(hidden_size=16, inner_size=32, dropout=0.0), 60, 12).eval()
    seq, lengths = _batch()
    seq, lengths = seq[[0, 1, 3, 4]], lengths[[0, 1, 3, 4]]  # longest history 7 of 12 columns
    full = MODELS[name].positions(model.encoder, seq, model.item_embeddings)  # the untrimmed forward
    expected = full[torch.arange(4), lengths - 1]
    torch.testing.assert_close(model.user_state(seq, lengths), expected, atol=1e-6, rtol=1e-5)
    x, y = make_windows([torch.randint(1, 60, (n,)).numpy() for n in (4, 6)], 12)  # 5 of 12 columns used
    states = model.position_states(x)
    mask = y > 0
    untrimmed = torch.nn.functional.cross_entropy(model.logits(model.head(states[mask])), y[mask], reduction="sum")
    torch.testing.assert_close(PositionLossSum(model)(x, y), untrimmed, atol=1e-5, rtol=1e-6)


def test_importing_the_models_leaves_autograd_anomaly_detection_off():
    """RecBole's SINE module turns anomaly detection on at import (≈ 2× slower training); we turn it off."""
    assert not torch.is_anomaly_enabled()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_last_state_is_the_trimmed_user_state_at_any_width(name):
    """``user_state`` drops trailing padding (data-dependent: eager only) and reads ``last_state``, the gather at
    ``length − 1`` that an exported graph runs at any width: the same state, whatever padding follows."""
    torch.manual_seed(3)
    model = EditableSeqRec(name, _id_only(hidden_size=16, inner_size=32), n_items=60, max_seq_len=12).eval()
    seq, lengths = _batch(batch=4, max_len=12)
    lengths = lengths.clamp(max=7)
    seq[torch.arange(12).view(1, -1) >= lengths.view(-1, 1)] = 0  # the longest row has 7 items
    with torch.no_grad():
        trimmed = model.user_state(seq, lengths)
        assert torch.equal(trimmed, model.last_state(seq[:, :7], lengths))
        assert torch.allclose(model.last_state(seq, lengths), trimmed, atol=1e-5)  # 5 padding columns more


def test_an_edit_clipped_already_is_not_clipped_again():
    edit = HeadEdit([torch.full((2, 2), 5.0)], [None], clip=float("inf"))
    assert edit.clipped() is edit and HeadEdit(edit.dW, edit.db, clip=1.0).clipped().dW[0].max() == 1.0
