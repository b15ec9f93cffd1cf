"""Base-model training: next-item cross-entropy over all items at every position (SASRec's objective).

RecBole's stock ``Trainer`` feeds one augmented row per user prefix (≈190 s per ml-100k epoch here,
far from converged after one); training every position of each user's training-period sequence in
one pass is the original SASRec objective, on RecBole's model object, splits and evaluator
(≈100× faster per epoch). Model selection uses the validation split only.

One sampler (:func:`epoch_order`, shardable by rank) and one checkpoint writer
(:func:`recsys.checkpoint.save_checkpoint`) keep the loop ready for ``torchrun``.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recsys.config import PersonaConfig
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
    device = cfg.torch_device()
    model = EditableSeqRec(cfg.model, cfg.model_params, split.n_items, cfg.data.max_seq_len).to(device)
    inputs, targets = make_windows(split.train_sequences, cfg.data.max_seq_len)
    inputs, targets = inputs.to(device), targets.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    metric = cfg.eval.valid_metric.lower()
    best_state, best_valid, best_epoch, bad = None, None, -1, 0
    history = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.train.epochs), desc=f"train {cfg.model} seed {seed}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
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
        valid = evaluate_rows(
            model_score_fn(model), split.eval_rows("valid"), split.config, cfg.eval.batch_size, device
        )
        history.append({"epoch": epoch, "loss": total / max(batches, 1), **valid})
        bar.set_postfix(loss=f"{total / max(batches, 1):.3f}", **{metric: f"{valid[metric]:.4f}"})
        if best_valid is None or valid[metric] > best_valid[metric]:
            best_state, best_valid, best_epoch, bad = copy.deepcopy(model.state_dict()), valid, epoch, 0
        else:
            bad += 1
            if bad >= cfg.train.patience:
                break
        if cfg.train.time_budget_s and time.perf_counter() - t0 > cfg.train.time_budget_s:
            log.info("time budget reached after epoch %d", epoch)
            break
    model.load_state_dict(best_state)
    model.cpu().eval()
    return TrainResult(model, best_epoch, best_valid, history, time.perf_counter() - t0)
