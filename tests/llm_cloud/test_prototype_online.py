"""A dynamic bank while the test period streams in: refinement, OOD spawning, outcomes, prequential learning."""

from __future__ import annotations

import pytest
import torch

from llm_cloud.adapter_config import PrototypeConfig
from llm_cloud.prototype_online import absorb_rows, learn, observe, refine, spawn
from llm_cloud.prototypes import proto_logodds
from recsys import ood
from tests.llm_cloud.test_adapter import D, _bank


def _parts(bank, k):
    return [p[k].clone() for p in bank.weights + bank.biases]


def test_refinement_moves_the_prototype_and_ood_spawns_a_new_one():
    bank, adapter, samples, base = _bank(PrototypeConfig(k=2, variant="centre", max_k=3, refine_rate=0.5))
    before = bank.centres[0].clone()
    far = before + 100.0
    parts = _parts(bank, 0)
    refine(bank, 0, far, parts, torch.zeros(D))
    assert torch.allclose(bank.centres[0], before + 50.0)
    new = spawn(bank, before + 1000.0, parts, torch.zeros(D))
    assert new == 2 and bank.size == 3 and bank.spawned == 1
    assert bank.assign_nearest((before + 1000.0).view(1, -1))[0].item() == 2
    assert all(torch.equal(p[2], q) for p, q in zip(bank.weights + bank.biases, parts))  # its own edit
    assert float(bank.cache_gain[2]) == 0.0  # no held-out evidence: not served from a device's cache
    assert spawn(bank, before - 1000.0, parts, torch.zeros(D)) is None  # max_k reached: per-sample fallback
    # the new prototype starts at the bank-wide miss rate; observed misses move its log-odds
    odds = proto_logodds(bank)
    assert len(odds) == 3 and float(odds[2]) == pytest.approx(float(ood.logit(torch.tensor(bank.prior))), abs=1e-5)
    observe(bank, torch.tensor([2, 2, 2]), torch.tensor([True, True, True]))
    assert float(proto_logodds(bank)[2]) > float(odds[2])


def test_running_mean_refinement_counts_the_training_cluster():
    bank, adapter, samples, base = _bank(PrototypeConfig(k=2, variant="centre"))  # refine_rate None
    n0 = float(bank.counts[0])
    before = bank.centres[0].clone()
    refine(bank, 0, before + 100.0, _parts(bank, 0), torch.zeros(D))
    assert torch.allclose(bank.centres[0], before + 100.0 / (n0 + 1), atol=1e-4)
    assert float(bank.counts[0]) == n0 + 1


def test_absorbed_rows_spawn_when_out_of_distribution_and_refine_otherwise():
    bank, adapter, samples, base = _bank(PrototypeConfig(k=2, variant="centre", max_k=3, refine_rate=0.5))
    flat = torch.stack([bank.centres[1] + 2.0, bank.centres[0] + 500.0, bank.centres[0] + 900.0])
    parts = [torch.stack([p[1], p[0], p[0]]) for p in bank.weights + bank.biases]
    before = bank.centres[1].clone()
    absorb_rows(bank, torch.tensor([1, 0, 0]), torch.tensor([False, True, True]), flat, parts, torch.zeros(3, D))
    assert torch.allclose(bank.centres[1], before + 1.0)  # refined half way
    assert bank.size == 3 and torch.equal(bank.centres[2], flat[1])  # the first OOD row opened a prototype ...
    assert torch.allclose(bank.centres[0], (bank.centres[2] - 500.0 + flat[2]) / 2)  # ... the bank full: refined


def test_prequential_learning_fits_the_revealed_items():
    bank, adapter, samples, base = _bank(PrototypeConfig(k=2, variant="centre", online_lr=0.05))
    k = torch.zeros(16, dtype=torch.long)
    state, target = samples.state[:16], samples.targets[:16, 0]
    untouched = bank.weights[0][1].clone()
    losses = [learn(bank, base, k, state, target) for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0]  # the assigned prototype's head learnt these next items
    assert bank.weights[0].abs().max() <= bank.cfg.total_clip
    assert torch.equal(bank.weights[0][1], untouched)  # no row of prototype 1: Adam leaves it where it was
    spawn(bank, bank.centres[0], _parts(bank, 0), state[0])
    assert learn(bank, base, k, state, target) is not None and bank.weights[0].size(0) == 3  # restarted, grown
    off = PrototypeConfig(k=2, variant="centre")
    assert learn(_bank(off)[0], base, k, state, target) is None  # online_lr None: unsupervised refinement only
