"""The prototype bank's state: assignment, the served edit of a prototype, persistence, the trainable heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llm_cloud.adapter_config import PrototypeConfig
from llm_cloud.prototypes import PrototypeBank, PrototypeHeads, cache_ok
from recsys.wire import EditPayload
from tests.llm_cloud.test_adapter import L, _bank


def test_prototype_assignment_nearest_and_min_residual():
    bank, adapter, samples, base = _bank(PrototypeConfig(k=4, variant="centre"))
    assert bank.size == 4 and bank.centres.shape == (4, L * 8)
    k, d = bank.assign_nearest(bank.centres + 1e-4)
    assert k.tolist() == [0, 1, 2, 3] and float(d.max()) < 1e-2
    centre_edit = adapter.edits_from_codes(bank.centres.view(4, L, 8), base)
    assert bank.assign_min_residual(centre_edit).tolist() == [0, 1, 2, 3]  # a centre needs no residual
    snap = bank.snapshot()
    assert len(snap.signatures) == 4 and len(snap.edits) == 4
    assert EditPayload.model_validate_json(snap.edits[2].model_dump_json()).prototype_id == 2


def test_state_dict_round_trip_keeps_the_version_and_a_copy_is_independent():
    bank, *_ = _bank(PrototypeConfig(k=3, variant="centre"))
    other = PrototypeBank(bank.cfg, bank.n_layers, bank.code_dim, bank.adapter_clip)
    other.load_state_dict(bank.state_dict())
    assert other.version == bank.version and other.ood_threshold == bank.ood_threshold
    assert cache_ok(other) == cache_ok(bank)
    twin = bank.copy()
    twin.weights[0][1] += 1.0
    assert twin.version != bank.version and not torch.equal(twin.weights[0], bank.weights[0])


def test_prototype_heads_loss_is_the_summed_cross_entropy_of_the_served_prototype_edit():
    bank, _, samples, base = _bank(PrototypeConfig(k=3, variant="centre"))
    state, target = samples.state[:20], samples.targets[:20, 0]
    k = torch.arange(20) % bank.size
    heads = PrototypeHeads(base, [p.clone() for p in bank.weights + bank.biases], bank.cfg.total_clip)
    with torch.no_grad():
        want = F.cross_entropy(base.logits(base.head(state, bank.edit_for(k, None, None))), target, reduction="sum")
        one = F.cross_entropy(base.logits(base.head(state, bank.prototype_edit(1))), target, reduction="sum")
        assert torch.allclose(heads(state, target, k), want)
        alone = PrototypeHeads(base, [p[1].clone() for p in bank.weights + bank.biases], bank.cfg.total_clip)
        assert torch.allclose(alone(state, target), one)  # one prototype's edit, every row
    assert [p.shape for p in heads.parameters()] == [p.shape for p in bank.weights + bank.biases]
