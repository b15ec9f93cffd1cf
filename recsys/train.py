"""Base-model training: the model's loss (:mod:`recsys.losses`; next-item cross-entropy over all items at
every position for SASRec and GRU4Rec, cloze for BERT4Rec).

RecBole's stock ``Trainer`` feeds one augmented row per user prefix (≈190 s per ml-100k epoch here,
far from converged after one); training every position of each user's training-period sequence in
one pass is the original SASRec objective, on RecBole's model object, splits and evaluator. The
epochs, validation selection, patience, time budget and DDP are :func:`recsys.loop.fit`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recsys import distributed
from recsys.config import PersonaConfig
from recsys.evaluate import evaluate_rows, model_score_fn
from recsys.item_side import load_item_side
from recsys.loop import FitResult, HasFit, LoopSettings, epoch_order, fit, seed_everything, settings_from
from recsys.losses import training_loss
from recsys.models import EditableSeqRec
from recsys.splits import SplitData


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


def next_item_loss(model: EditableSeqRec, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The model's training loss (:func:`recsys.losses.training_loss`) per non-padding position of the windows."""
    return training_loss(model)(inputs, targets) / (targets > 0).sum().clamp(min=1)


def loop_settings(cfg: PersonaConfig) -> LoopSettings:
    t = cfg.train
    return settings_from(t, valid_metric=cfg.eval.valid_metric, bucket_batches=t.bucket_batches,
                         dist_timeout_s=t.dist_timeout_s)  # fmt: skip


@dataclass
class TrainResult(HasFit):
    model: EditableSeqRec
    fit: FitResult


def train_model(split: SplitData, cfg: PersonaConfig, seed: int, progress: bool = True) -> TrainResult:
    """Train ``cfg.model`` on ``split``'s training period; keep the epoch best on validation."""
    seed_everything(seed)
    torch.set_num_threads(cfg.train.threads)
    device = distributed.rank_device(cfg)
    side = None
    if cfg.model_params.item_side != "none":
        side = load_item_side(cfg.item_side_path(), split.item_tokens, split.train_counts, cfg.model_params.side_dims)
    model = EditableSeqRec(cfg.model, cfg.model_params, split.n_items, cfg.data.max_seq_len, side).to(device)
    inputs, targets = make_windows(split.train_sequences, cfg.data.max_seq_len)
    weights = (targets > 0).sum(1).numpy()  # loss terms per window = its length
    inputs, targets = inputs.to(device), targets.to(device)
    valid_rows = split.eval_rows("valid")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def batch_of(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(device)
        return inputs[idx], targets[idx]

    def validate() -> dict[str, float]:
        return evaluate_rows(model_score_fn(model), valid_rows, split.config, cfg.eval.batch_size, device, True)

    result = fit(
        model, training_loss(model), batch_of, weights, validate, opt, loop_settings(cfg), seed,
        desc=f"train {cfg.model} seed {seed}", progress=progress, lengths=weights,
    )
    model.cpu().eval()
    return TrainResult(model, result)


__all__ = ["TrainResult", "epoch_order", "loop_settings", "make_windows", "next_item_loss",
           "seed_everything", "train_model"]
