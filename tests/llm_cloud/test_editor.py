"""The served edit: one function behind the cloud's ``AdapterEditor`` and the ``served`` evaluation method."""

from __future__ import annotations

import torch

from llm_cloud.adapter import edited_logits, left_padded_windows
from llm_cloud.adapter_config import PrototypeConfig
from llm_cloud.editor import AdapterEditor, served_edit
from llm_cloud.prototypes import clipped_parts
from tests.llm_cloud.test_adapter import N_ITEMS, _bank


def _histories(b=6, n=10):
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(1, N_ITEMS, (b, n), generator=g)
    length = torch.tensor([10, 7, 1, 4, 10, 2])
    seq[torch.arange(n).view(1, -1) >= length.view(-1, 1)] = 0
    return seq, length


def _row_logits(base, seq, length, edit):
    return edited_logits(base, base.user_state(seq, length), edit)


def test_served_batch_equals_what_the_service_sends_each_device():
    bank, adapter, _, base = _bank(PrototypeConfig(k=3, variant="centre"))
    seq, length = _histories()
    _, _, dist = served_edit(base, adapter, bank, None, seq, length)
    d = dist.sort().values
    bank.ood_threshold = float(d[2] + d[3]) / 2  # some rows in distribution, some not (no row at the edge)
    edit, proto, dist = served_edit(base, adapter, bank, None, seq, length)
    ood = dist > bank.ood_threshold
    assert ood.any() and (~ood).any() and proto[ood].eq(-1).all() and proto[~ood].ge(0).all()
    batch = _row_logits(base, seq, length, edit)
    editor = AdapterEditor(base, adapter, bank, None, "v")
    for i in range(len(seq)):
        payload = editor.edit(seq[i, : length[i]].tolist())
        assert payload.prototype_id == (None if ood[i] else int(proto[i]))
        served = _row_logits(base, seq[i : i + 1], length[i : i + 1], payload.head_edit())
        assert torch.allclose(served[0], batch[i], atol=1e-5)


def test_out_of_distribution_rows_get_their_own_edit_the_rest_prototype_plus_residual():
    bank, adapter, _, base = _bank(PrototypeConfig(k=3, variant="centre"))
    seq, length = _histories()
    bank.ood_threshold = float("inf")
    edit, proto, _ = served_edit(base, adapter, bank, None, seq, length)
    assert proto.ge(0).all()
    window = left_padded_windows(seq, length, adapter.cfg.window)
    codes = adapter.layer_codes(adapter.sequence_code(window, None, base.user_state(seq, length)))
    sample = adapter.edits_from_codes(codes, base)
    centre = adapter.edits_from_codes(bank.centres[proto].view_as(codes), base)
    expected = bank.edit_for(proto, sample, centre)
    assert all(torch.equal(a, b) for a, b in zip(edit.dW + edit.db, expected.dW + expected.db))

    bank.ood_threshold = -1.0  # every row out of distribution: the window's own clipped edit
    edit, proto, _ = served_edit(base, adapter, bank, None, seq, length)
    assert proto.eq(-1).all()
    own = clipped_parts(sample, adapter.cfg.clip)
    assert all(torch.equal(a, b) for a, b in zip(edit.dW + edit.db, own))
