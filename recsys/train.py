"""Base-model training: next-item cross-entropy over all items at every position (SASRec's objective).

RecBole's stock ``Trainer`` feeds one augmented row per user prefix (≈190 s per ml-100k epoch here,
far from converged after one); training every position of each user's training-period sequence in
one pass is the original SASRec objective, on RecBole's model object, splits and evaluator
(≈100× faster per epoch). Model selection uses the validation split only.

One sampler (:func:`epoch_order`, shardable by rank) and one checkpoint writer
(:func:`recsys.checkpoint.save_checkpoint`) keep the loop ready for ``torchrun``: inside a process
group (:mod:`recsys.distributed`) the model is wrapped in ``DistributedDataParallel``, each rank takes
``batch_size / world_size`` windows of every global batch, and the per-rank loss is the sum over its
positions scaled by ``world_size / global valid positions``, so DDP's averaged gradient equals the
single-process gradient of the same global batch. Rank 0 validates and broadcasts the result, so every
rank keeps the same best epoch and stops together.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from recsys import distributed
from recsys.config import ConfigError, PersonaConfig
from recsys.evaluate import evaluate_rows, model_score_fn
from recsys.models import EditableSeqRec
from recsys.splits import SplitData

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_windows(sequences: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut sequences into right-padded ``(inputs, targets)`` windows of ``max_len``; every target once.

    Windows are aligned to the end of each sequence, so the most recent items keep full context.
    """
    inputs, targets = [], []
    for seq in sequences:
        end = len(seq)
        while end > 1:
            start = max(0, end - max_len - 1)
            win = seq[start:end]
            x = np.zeros(max_len, dtype=np.int64)
            y = np.zeros(max_len, dtype=np.int64)
            x[: len(win) - 1] = win[:-1]
            y[: len(win) - 1] = win[1:]
            inputs.append(x)
            targets.append(y)
            end = start + 1
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The shuffled sample order for one epoch, this rank's shard (same on every rank before sharding)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[rank::world_size]


def next_item_loss(model: EditableSeqRec, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all items at every non-padding position."""
    states = model.position_states(inputs)
    mask = targets > 0
    query = model.head(states[mask])
    return F.cross_entropy(model.logits(query), targets[mask])


class PositionLossSum(nn.Module):
    """Summed next-item cross-entropy over non-padding positions; the ``forward`` DDP wraps."""

    def __init__(self, model: EditableSeqRec):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        states = self.model.position_states(inputs)
        mask = targets > 0
        query = self.model.head(states[mask])
        return F.cross_entropy(self.model.logits(query), targets[mask], reduction="sum")


def _ddp_epoch(
    ddp: DistributedDataParallel,
    opt: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    n_valid: np.ndarray,
    cfg: PersonaConfig,
    seed: int,
    epoch: int,
    die_at: int | None,
) -> tuple[float, int]:
    """One epoch on this rank's shard; returns (sum of global batch losses, steps), same on every rank."""
    rank, world = distributed.rank(), distributed.world_size()
    batch, per_rank = cfg.train.batch_size, cfg.train.batch_size // world
    full = epoch_order(len(inputs), seed, epoch)  # only to count each global batch's valid positions
    shard = torch.from_numpy(epoch_order(len(inputs), seed, epoch, rank, world)).to(inputs.device)
    steps = math.ceil(len(inputs) / batch)
    total = 0.0
    for step in range(steps):
        if die_at is not None and epoch == 0 and step == die_at:
            os._exit(1)  # test-only fault injection (recsys.distributed.TEST_DIE_ENV)
        # Shard k of rank r = positions r, r+W, ... of global batch k, so the ranks' union is that batch.
        idx = shard[step * per_rank : (step + 1) * per_rank]
        scale = world / float(n_valid[full[step * batch : (step + 1) * batch]].sum())
        if len(idx) == 0:  # the last global batch is smaller than the world: join the all-reduce with zeros
            idx, scale = shard[:1], 0.0
        loss = ddp(inputs[idx], targets[idx]) * scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.train.grad_clip)
        opt.step()
        total += loss.item() / world
    return distributed.all_reduce_sum(total), steps


@dataclass
class TrainResult:
    model: EditableSeqRec
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def train_model(split: SplitData, cfg: PersonaConfig, seed: int, progress: bool = True) -> TrainResult:
    """Train ``cfg.model`` on ``split``'s training period; keep the epoch best on validation."""
    seed_everything(seed)
    torch.set_num_threads(cfg.train.threads)
    rank, world = distributed.rank(), distributed.world_size()
    device = distributed.rank_device(cfg)
    model = EditableSeqRec(cfg.model, cfg.model_params, split.n_items, cfg.data.max_seq_len).to(device)
    inputs, targets = make_windows(split.train_sequences, cfg.data.max_seq_len)
    n_valid = (targets > 0).sum(1).numpy()
    inputs, targets = inputs.to(device), targets.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    ddp, die_at = None, None
    if world > 1:
        if cfg.train.batch_size % world or len(inputs) < world:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} must be a multiple of the {world} ranks")
        ids = [int(device.split(":")[1])] if device.startswith("cuda") else None
        ddp = DistributedDataParallel(PositionLossSum(model), device_ids=ids)
        torch.manual_seed(seed + 100_003 * rank)  # same initial weights, independent dropout per rank
        die_at = distributed.fault_step_for_tests()
    metric = cfg.eval.valid_metric.lower()
    best_state, best_valid, best_epoch, bad = None, None, -1, 0
    history = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.train.epochs), desc=f"train {cfg.model} seed {seed}", disable=not progress, leave=False)
    with distributed.collective_errors(cfg.train.dist_timeout_s):
        for epoch in bar:
            model.train()
            t_epoch = time.perf_counter()
            if ddp is None:
                order = torch.from_numpy(epoch_order(len(inputs), seed, epoch)).to(device)
                total, batches = 0.0, 0
                for start in range(0, len(order), cfg.train.batch_size):
                    idx = order[start : start + cfg.train.batch_size]
                    loss = next_item_loss(model, inputs[idx], targets[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                    opt.step()
                    total += loss.item()
                    batches += 1
            else:
                total, batches = _ddp_epoch(ddp, opt, inputs, targets, n_valid, cfg, seed, epoch, die_at)
            train_s = time.perf_counter() - t_epoch
            # rank 0 validates and decides on the time budget; every rank applies the same decision
            valid, over_budget = None, False
            if rank == 0:
                valid = evaluate_rows(
                    model_score_fn(model), split.eval_rows("valid"), split.config, cfg.eval.batch_size, device
                )
                over_budget = bool(cfg.train.time_budget_s and time.perf_counter() - t0 > cfg.train.time_budget_s)
            valid, over_budget = distributed.broadcast_object((valid, over_budget))
            history.append({"epoch": epoch, "loss": total / max(batches, 1), "train_s": train_s, **valid})
            bar.set_postfix(loss=f"{total / max(batches, 1):.3f}", **{metric: f"{valid[metric]:.4f}"})
            if best_valid is None or valid[metric] > best_valid[metric]:
                best_state, best_valid, best_epoch, bad = copy.deepcopy(model.state_dict()), valid, epoch, 0
            else:
                bad += 1
                if bad >= cfg.train.patience:
                    break
            if over_budget:
                log.info("time budget reached after epoch %d", epoch)
                break
    model.load_state_dict(best_state)
    model.cpu().eval()
    return TrainResult(model, best_epoch, best_valid, history, time.perf_counter() - t0)
