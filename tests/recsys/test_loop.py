"""The shared training loop (recsys.loop): validation selection, patience after the warm-up, the time
budget, micro-batch accumulation. The DDP equivalence runs in test_distributed.py (base) and
tests/llm_cloud/test_adapter_distributed.py (adapter) through the real CLI.

The task here is a small least-squares fit so the loop's own logic is what is tested; ``validate``
plays back a scripted curve so every stopping rule is exercised exactly.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from recsys import loop
from recsys.config import ConfigError
from recsys.loop import LoopSettings, fit, optimizer_step


class SquaredError(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((self.model(x) - y) ** 2).sum()


def _task(n: int = 64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    return model, SquaredError(model), (lambda idx: (x[idx], y[idx])), np.ones(n)


def _run(curve: list[float], snapshots: list | None = None, **kw):
    model, loss, batch_of, weights = _task()
    it = iter(curve)

    def validate():
        if snapshots is not None:
            snapshots.append(model.weight.detach().clone())
        return {"ndcg@10": next(it), "hit@10": 0.0}

    settings = LoopSettings(**{"epochs": len(curve), "batch_size": 16, "grad_clip": 10.0, "patience": 2, **kw})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, fit(model, loss, batch_of, weights, validate, opt, settings, seed=0, progress=False)


def test_keeps_the_state_of_the_best_validation_epoch():
    snaps: list = []
    model, res = _run([0.1, 0.3, 0.2, 0.25, 0.1], snaps)
    assert res.best_epoch == 1 and res.best_valid["ndcg@10"] == 0.3
    assert torch.equal(model.weight, snaps[1])
    assert not torch.equal(snaps[1], snaps[-1])
    assert res.stopped_by == "patience" and res.converged and len(res.history) == 4


def test_patience_waits_out_the_starting_plateau():
    # flat (within ±20 %) for 6 epochs, then it climbs: patience 2 must not stop it in the plateau
    curve = [0.010, 0.012, 0.011, 0.010, 0.012, 0.011, 0.020, 0.040, 0.050, 0.049, 0.048, 0.047]
    _, res = _run(curve, plateau_gain=0.5)
    assert res.best_epoch == 8 and res.stopped_by == "patience" and len(res.history) == 11
    # without the plateau rule the same curve stops at epoch 3, inside the plateau
    _, early = _run(curve, plateau_gain=0.0)
    assert early.best_epoch == 1 and len(early.history) == 4


def test_min_epochs_delays_early_stopping():
    curve = [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.04, 0.03]
    _, res = _run(curve, min_epochs=5, plateau_gain=0.0)
    assert len(res.history) == 6 and res.best_epoch == 0
    _, early = _run(curve, plateau_gain=0.0)
    assert len(early.history) == 3


def test_time_budget_stops_after_the_epoch_that_reaches_it_and_is_not_converged(caplog):
    with caplog.at_level(logging.WARNING):
        _, res = _run([0.1, 0.2, 0.3], time_budget_s=1e-9)
    assert len(res.history) == 1 and res.stopped_by == "time_budget" and not res.converged
    assert "not a converged result" in caplog.text


def test_warns_when_a_run_ends_near_its_starting_score(caplog):
    with caplog.at_level(logging.WARNING):
        _, res = _run([0.10, 0.101, 0.10, 0.10], plateau_gain=0.5)
    assert res.stopped_by == "epochs"
    assert "ended near its starting score" in caplog.text


def test_two_accumulated_micro_batches_equal_one_batch():
    snaps1: list = []
    snaps2: list = []
    _run([0.1, 0.2], snaps1)
    _run([0.1, 0.2], snaps2, micro_batches=2)
    torch.testing.assert_close(snaps2[-1], snaps1[-1], atol=1e-6, rtol=1e-5)


def test_unknown_validation_metric_names_the_setting():
    with pytest.raises(ConfigError, match="valid_metric 'recall@10'"):
        _run([0.1], valid_metric="recall@10")


def test_micro_batches_must_fit_the_batch():
    with pytest.raises(ConfigError, match="micro_batches"):
        _run([0.1], micro_batches=32)


def test_without_validation_runs_every_epoch_and_keeps_the_last_state():
    model, loss, batch_of, weights = _task()
    settings = LoopSettings(epochs=3, batch_size=16, grad_clip=10.0, patience=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = loss(*batch_of(torch.arange(64))).item()
    res = fit(model, loss, batch_of, weights, None, opt, settings, seed=0, progress=False)
    assert len(res.history) == 3 and res.best_epoch == 2 and res.stopped_by == "epochs"
    assert loss(*batch_of(torch.arange(64))).item() < before  # it trained, and kept the trained state


def test_alone_trains_in_this_process_even_inside_a_process_group(monkeypatch):
    """Rank 0's own small fits (the prototype heads) run while the other ranks wait: no DDP, no collective."""
    snaps: list = []
    _run([0.1, 0.2, 0.3], snaps)
    monkeypatch.setattr(loop.distributed, "world_size", lambda: 2)  # as under torchrun; a collective would hang
    monkeypatch.setattr(loop.distributed, "all_reduce_sum", lambda v: pytest.fail("a collective was called"))
    monkeypatch.setattr(loop.distributed, "broadcast_object", lambda v: pytest.fail("a collective was called"))
    alone: list = []
    _run([0.1, 0.2, 0.3], alone, alone=True)
    assert all(torch.equal(a, b) for a, b in zip(snaps, alone))  # the same run as outside any group


def test_optimizer_step_is_one_fresh_update():
    model, loss, batch_of, _ = _task()
    twin = nn.Linear(4, 1)
    twin.load_state_dict(model.state_dict())
    opt, twin_opt = torch.optim.Adam(model.parameters(), lr=0.1), torch.optim.Adam(twin.parameters(), lr=0.1)
    model.weight.grad = torch.full_like(model.weight, 1e3)  # a stale gradient is dropped, not added
    x, y = batch_of(torch.arange(8))
    got = optimizer_step(opt, loss(x, y))
    want = ((twin(x) - y) ** 2).sum()
    want.backward()
    twin_opt.step()
    assert float(got) == float(want.detach()) and not got.requires_grad
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)
