"""On-device fine-tuning (the baseline behind the device-cost claim): batched = each device alone, and it fits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys.config import ModelConfig
from recsys.finetune import finetune_edit
from recsys.models import EditableSeqRec, HeadEdit


def _model() -> EditableSeqRec:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=16, inner_size=32, dropout=0.0, item_side="none")
    return EditableSeqRec("sasrec", cfg, n_items=40, max_seq_len=10).eval()


def _seqs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    seq = torch.zeros(3, 10, dtype=torch.long)
    lengths = torch.tensor([10, 7, 4])
    for i, n in enumerate(lengths.tolist()):
        seq[i, :n] = torch.randint(1, 40, (n,), generator=gen)
    return seq, lengths


def _window_loss(model: EditableSeqRec, seq, length, edit) -> float:
    """Mean next-item loss over the device's own transitions, its head edited by ``edit``."""
    states = model.position_states(seq)[0, : int(length) - 1]
    logits = model.logits(model.head(states, edit))
    return float(F.cross_entropy(logits, seq[0, 1 : int(length)]))


def test_a_batch_of_devices_is_fine_tuned_as_each_device_alone():
    model, (seq, lengths) = _model(), _seqs()
    together = finetune_edit(model, seq, lengths, window=5, steps=4)
    for i in range(len(seq)):
        alone = finetune_edit(model, seq[i : i + 1], lengths[i : i + 1], window=5, steps=4)
        for a, b in zip(alone.dW + alone.db, together.dW + together.db):
            torch.testing.assert_close(a[0], b[i], atol=1e-5, rtol=1e-4)


def test_fine_tuning_lowers_the_devices_own_loss():
    model, (seq, lengths) = _model(), _seqs()
    batched = finetune_edit(model, seq[:1], lengths[:1], window=9, steps=20, lr=0.05)
    edit = HeadEdit([w[0] for w in batched.dW], [b[0] for b in batched.db], clip=batched.clip)  # one device
    assert any(float(w.abs().max()) > 0 for w in edit.dW)
    with torch.no_grad():
        before = _window_loss(model, seq[:1], lengths[0], None)
        after = _window_loss(model, seq[:1], lengths[0], edit)
    assert after < 0.9 * before, (before, after)
