"""The one training loop (base model and adapter): shuffled global batches, validation selection,
patience after a warm-up, a time budget, DDP and progress in one place.

Each global batch of ``batch_size`` samples is split into ``micro_batches`` parts (part ``k`` =
positions ``k, k+M, ...`` of the batch). In one process the parts' gradients accumulate; under
``torchrun`` rank ``r`` computes parts ``r, r+W, ...`` and DDP sums them. Every part's loss is its
*summed* loss scaled by ``W / (loss terms in the global batch)``, so a run with ``M`` parts in one
process and a run of ``W = M`` ranks perform the same floating-point operations on the same shapes:
their gradients, and so their weights, are bit-identical (the scale by ``W`` and DDP's division by
``W`` are exact for a power of two), whatever the load or the thread count of the machine.

Stopping: patience counts only after ``min_epochs`` epochs *and* once validation has left its
starting plateau (best score ≥ ``(1 + plateau_gain)`` × the first epoch's), so a run is never
early-stopped inside the plateau that sequential models sit on for their first epochs. A time budget
or the epoch limit may still end a run there: the result then says ``converged=False`` and a warning
names the run, so no caller reports it as the model's result without saying so.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from recsys import distributed
from recsys.config import ConfigError, LoopConfig

log = logging.getLogger(__name__)

BatchFn = Callable[[torch.Tensor], tuple]  # sample indices -> the loss module's forward arguments


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs from a training config (``TrainConfig`` or ``AdapterConfig``)."""

    epochs: int
    batch_size: int
    grad_clip: float
    patience: int
    min_epochs: int = 0  # no early stop before this many epochs
    plateau_gain: float = 0.1  # validation must beat the first epoch by this fraction before patience counts
    time_budget_s: float | None = None  # stop after the first epoch that reaches it (>=)
    valid_metric: str = "ndcg@10"
    bucket_batches: int = 0  # > 0 (with lengths): batches of similar-length samples (epoch_batches)
    micro_batches: int | None = None  # parts per global batch; None = the world size
    samples_per_epoch: int | None = None  # None = every sample each epoch; N = a fresh random N
    dist_timeout_s: float = 300.0
    alone: bool = False  # this process alone, even under torchrun (rank 0's own small fits: prototype heads)


LOOP_FIELDS = {f.name for f in dataclasses.fields(LoopSettings)}


def settings_from(cfg: LoopConfig, **overrides) -> LoopSettings:
    """The loop settings of a ``LoopConfig`` section (``train:``, ``adapter:``), plus ``overrides`` (what the
    section adds: ``bucket_batches``, ``samples_per_epoch``, the validation metric, …)."""
    loop = {n: getattr(cfg, n) for n in LoopConfig.model_fields if n in LOOP_FIELDS}
    return LoopSettings(**{**loop, **overrides})


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str = "epochs"  # "patience" | "time_budget" | "epochs"
    converged: bool = False  # stopped by patience after leaving the starting plateau

    @property
    def summary(self) -> dict:
        """What a checkpoint or report records about the run."""
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "stopped_by": self.stopped_by,
            "converged": self.converged,
            "train_seconds": round(self.seconds, 1),
        }


class HasFit:
    """For results that wrap a :class:`FitResult` as ``self.fit``: its fields, read through."""

    fit: FitResult

    @property
    def best_epoch(self) -> int:
        return self.fit.best_epoch

    @property
    def best_valid(self) -> dict[str, float]:
        return self.fit.best_valid

    @property
    def history(self) -> list[dict]:
        return self.fit.history

    @property
    def seconds(self) -> float:
        return self.fit.seconds


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The shuffled sample order for one epoch, this rank's shard (same on every rank before sharding)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[rank::world_size]


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, per_epoch: int | None = None,
    lengths: np.ndarray | None = None, bucket_batches: int = 0,
) -> list[np.ndarray]:
    """This epoch's global batches: a shuffled order (first ``per_epoch`` samples), cut into batches.

    With ``lengths`` and ``bucket_batches`` > 0, each run of ``bucket_batches`` batches is sorted by
    sample length before it is cut and the batches are then shuffled, so a batch holds samples of
    similar length and little padding; every sample is still seen once per epoch.
    """
    order = epoch_order(n, seed, epoch)[: per_epoch or n]
    if lengths is not None and bucket_batches > 0:
        chunk = bucket_batches * batch_size
        order = np.concatenate(
            [c[np.argsort(lengths[c], kind="stable")] for c in np.split(order, range(chunk, len(order), chunk))]
        )
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if lengths is not None and bucket_batches > 0:
        shuffle = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
        batches = [batches[i] for i in shuffle]
    return batches


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _parts(settings: LoopSettings, world: int) -> int:
    parts = settings.micro_batches or world
    if parts % world:
        raise ConfigError(f"micro_batches={parts} must be a multiple of the {world} ranks")
    if settings.batch_size < parts:
        raise ConfigError(f"batch_size={settings.batch_size} must be at least micro_batches={parts}")
    return parts


def _warmup_done(settings: LoopSettings, epoch: int, first: float, best: float) -> bool:
    return epoch + 1 >= settings.min_epochs and best >= first * (1 + settings.plateau_gain)


@dataclass
class _Ranks:
    """Who computes what of a global batch: this rank's micro-batch parts and the module it steps (DDP-wrapped
    across ranks)."""

    rank: int
    world: int
    parts: int
    step_fn: nn.Module
    trainable: list[torch.Tensor]
    die_at: int | None = None  # test-only fault injection (recsys.distributed.TEST_DIE_ENV)

    @property
    def my_parts(self) -> list[int]:
        return list(range(self.rank, self.parts, self.world))


def _ranks(loss_sum: nn.Module, settings: LoopSettings, seed: int) -> _Ranks:
    rank, world = (0, 1) if settings.alone else (distributed.rank(), distributed.world_size())
    trainable = [p for p in loss_sum.parameters() if p.requires_grad]
    if world == 1:
        return _Ranks(rank, world, _parts(settings, world), loss_sum, trainable)
    device = next(iter(trainable)).device
    ids = [device.index] if device.type == "cuda" else None
    step_fn = DistributedDataParallel(loss_sum, device_ids=ids, broadcast_buffers=False)
    torch.manual_seed(seed + 100_003 * rank)  # same initial weights, independent dropout per rank
    return _Ranks(rank, world, _parts(settings, world), step_fn, trainable, distributed.fault_step_for_tests())


def _train_epoch(r: _Ranks, batches: list[np.ndarray], batch_of: BatchFn, weights: np.ndarray,
                 opt: torch.optim.Optimizer, grad_clip: float, epoch: int) -> float:  # fmt: skip
    """One pass over ``batches``; each global batch's parts accumulate (DDP all-reduces the last one). The
    mean summed-and-scaled loss per step, over all ranks."""
    total = torch.zeros((), dtype=torch.float64)
    my_parts = r.my_parts
    for step, batch_np in enumerate(batches):
        if r.die_at is not None and epoch == 0 and step == r.die_at:
            os._exit(1)  # test-only fault injection
        batch = torch.from_numpy(batch_np)
        scale = r.world / max(float(weights[batch_np].sum()), 1.0)
        opt.zero_grad(set_to_none=True)
        for j, part in enumerate(my_parts):
            idx, s = batch[part :: r.parts], scale
            if len(idx) == 0:
                if r.world == 1:
                    continue
                idx, s = batch[:1], 0.0  # an empty part still joins DDP's all-reduce, with zeros
            last = j == len(my_parts) - 1
            sync = contextlib.nullcontext() if r.world == 1 or last else r.step_fn.no_sync()
            with sync:
                loss = r.step_fn(*batch_of(idx)) * s
                loss.backward()
            total += loss.detach().double() / r.world
        torch.nn.utils.clip_grad_norm_(r.trainable, grad_clip)
        opt.step()
    return (float(total) if r.world == 1 else distributed.all_reduce_sum(float(total))) / max(len(batches), 1)


def _validated(r: _Ranks, validate: Callable[[], dict[str, float]], settings: LoopSettings,
               t0: float) -> tuple[dict[str, float], bool]:  # fmt: skip
    """Rank 0 validates and decides on the time budget; every rank gets its decision."""
    valid, over_budget = None, False
    if r.rank == 0:
        valid = validate()
        if settings.valid_metric.lower() not in valid:
            raise ConfigError(f"valid_metric '{settings.valid_metric}' is not one of {sorted(valid)}")
        over_budget = settings.time_budget_s is not None and time.perf_counter() - t0 >= settings.time_budget_s
    if r.world > 1:
        valid, over_budget = distributed.broadcast_object((valid, over_budget))
    return valid, over_budget


@dataclass
class _Selection:
    """The epoch best on validation, and patience counted once the warm-up is done."""

    settings: LoopSettings
    metric: str
    best_state: dict | None = None
    best_valid: dict | None = None
    best_epoch: int = -1
    first: float | None = None
    bad: int = 0

    def update(self, model: nn.Module, epoch: int, valid: dict[str, float]) -> bool:
        """Keep ``model``'s state if ``valid`` is the best yet; True when patience has run out."""
        score = valid[self.metric]
        self.first = score if self.first is None else self.first
        if self.best_valid is None or score > self.best_valid[self.metric]:
            self.best_state, self.best_valid, self.best_epoch, self.bad = (
                copy.deepcopy(model.state_dict()), valid, epoch, 0)  # fmt: skip
        elif _warmup_done(self.settings, epoch, self.first, self.best_valid[self.metric]):
            self.bad += 1
        return self.bad >= self.settings.patience


def fit(
    model: nn.Module,
    loss_sum: nn.Module,
    batch_of: BatchFn,
    weights: np.ndarray,
    validate: Callable[[], dict[str, float]] | None,
    opt: torch.optim.Optimizer,
    settings: LoopSettings,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    lengths: np.ndarray | None = None,
) -> FitResult:
    """Train ``loss_sum`` (``forward(*batch_of(idx))`` = summed loss over those samples) and keep the
    state of ``model`` from the epoch best on ``validate()[settings.valid_metric]``.

    ``weights[i]`` is the number of loss terms of sample ``i`` (positions, targets); ``lengths[i]`` its
    length for bucketing (``settings.bucket_batches``). ``validate`` runs
    on rank 0 only; its result and the stop decision are broadcast, so all ranks stop together and end
    with the same weights. ``model`` is left in eval mode holding the best state. ``validate=None`` runs
    ``settings.epochs`` epochs and keeps the last state (a refresh with a fixed schedule chosen elsewhere).
    ``settings.alone`` trains in this process alone (no DDP, no collective) even inside a process group.
    """
    r = _ranks(loss_sum, settings, seed)
    n = len(weights)
    per_epoch = min(n, settings.samples_per_epoch or n)
    sel = _Selection(settings, settings.valid_metric.lower())
    history: list[dict] = []
    stopped_by = "epochs"
    t0 = time.perf_counter()
    bar = tqdm(range(settings.epochs), desc=desc, disable=not progress, leave=False)
    with distributed.collective_errors(settings.dist_timeout_s):
        for epoch in bar:
            loss_sum.train()
            t_epoch = time.perf_counter()
            batches = epoch_batches(n, settings.batch_size, seed, epoch, per_epoch, lengths, settings.bucket_batches)
            train_loss = _train_epoch(r, batches, batch_of, weights, opt, settings.grad_clip, epoch)
            row = {"epoch": epoch, "loss": train_loss, "train_s": round(time.perf_counter() - t_epoch, 3)}
            loss_sum.eval()
            if validate is None:
                history.append(row)
                bar.set_postfix(loss=f"{train_loss:.3f}")
                continue
            valid, over_budget = _validated(r, validate, settings, t0)
            history.append({**row, "seconds": round(time.perf_counter() - t0, 1), **valid})
            bar.set_postfix(loss=f"{train_loss:.3f}", **{sel.metric: f"{valid[sel.metric]:.4f}"})
            if sel.update(model, epoch, valid) or over_budget:
                stopped_by = "patience" if sel.bad >= settings.patience else "time_budget"
                break
    model.eval()
    if validate is None:
        return FitResult(len(history) - 1, {}, history, time.perf_counter() - t0)
    model.load_state_dict(sel.best_state)
    model.eval()
    _warn_unconverged(desc, stopped_by, sel, len(history))
    return FitResult(sel.best_epoch, sel.best_valid, history, time.perf_counter() - t0, stopped_by,
                     stopped_by == "patience")  # fmt: skip


def _warn_unconverged(desc: str, stopped_by: str, sel: _Selection, epochs: int) -> None:
    best, metric = sel.best_valid[sel.metric], sel.metric
    if stopped_by != "patience":
        log.warning(
            "%s: stopped by %s after %d epochs before validation plateaued (best %s %.4f at epoch %d): "
            "not a converged result", desc, stopped_by, epochs, metric, best, sel.best_epoch,
        )
    if not best > sel.first * (1 + max(sel.settings.plateau_gain, 0.05)):
        log.warning("%s: ended near its starting score (%s %.4f vs %.4f after the first epoch)",
                    desc, metric, best, sel.first)  # fmt: skip


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
    """One update outside :func:`fit`'s epochs, for a learner that is genuinely per step (an online learner's
    step on what was just revealed, a fixed few full-batch steps): zero the gradients, backpropagate
    ``loss``, step. Returns the loss, detached."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


__all__ = [
    "BatchFn", "FitResult", "HasFit", "LoopSettings", "epoch_batches", "epoch_order", "fit", "optimizer_step",
    "seed_everything", "settings_from",
]
