"""A teacher that keeps learning from the events the cloud receives, without look-ahead.

The stream (:class:`llm_cloud.stream.StreamRows`) is cut into segments of ``every_events`` rows from
``first`` on. Before serving a segment whose first event happens at ``t``, every member is fine-tuned,
warm-started from its current weights, on the events strictly before ``t`` it has not trained on yet plus
a replay sample of older events (training-period events and earlier stream rows), with the one fit loop
(:func:`recsys.loop.fit`, fixed epochs). An item gets a trained row from its first interactions: a
side-view member marks it seen and starts its ID row at zero, so its LLM view is what it had before.
Nothing at or after ``t`` reaches the version that serves ``t`` (:class:`TeacherVersion` records it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from llm_cloud.stream import StreamRows, prefix_windows
from llm_cloud.teacher import EnsembleTeacher
from recsys.loop import LoopSettings, fit
from recsys.losses import training_loss
from recsys.models import EditableSeqRec


class RefreshConfig(BaseModel):
    """How often and how hard the fresh teacher fine-tunes (chosen on the validation period)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every_events: int = Field(2000, ge=1, description="stream rows per teacher version (a refresh before each)")
    epochs: int = Field(2, ge=1, description="passes over the new events + replay sample per refresh")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of the refresh")
    batch_size: int = Field(128, ge=1)
    replay: float = Field(1.0, ge=0, description="replay sample size as a multiple of the new events")
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0


@dataclass(frozen=True)
class TeacherVersion:
    """The teacher serving stream rows ``[start, stop)``: built from events strictly before ``valid_from``."""

    start: int
    stop: int
    valid_from: float  # the time of row ``start``
    trained_until: float | None  # latest event time it has fine-tuned on (None: the checkpoints as trained)
    teacher: EnsembleTeacher


def segments(n_rows: int, first: int, every: int) -> list[tuple[int, int]]:
    return [(s, min(s + every, n_rows)) for s in range(first, n_rows, every)]


class FreshTeacher:
    """Members fine-tuned in place as the stream advances; ``replay_sequences`` are training-period sequences."""

    def __init__(self, teacher: EnsembleTeacher, replay_sequences: Sequence[np.ndarray], cfg: RefreshConfig):
        self.teacher, self.cfg = teacher, cfg
        self.replay_sequences = list(replay_sequences)
        self._replay_picks = np.array([(s, p) for s, seq in enumerate(self.replay_sequences)
                                       for p in range(1, len(seq))], dtype=np.int64).reshape(-1, 2)  # fmt: skip
        self.trained_rows = 0  # stream rows [0, trained_rows) have been trained on
        self.trained_until: float | None = None
        self.refreshes = 0

    def versions(self, stream: StreamRows, first: int = 0) -> Iterator[TeacherVersion]:
        """Versions serving rows ``first:`` in order; each is refreshed on the rows before its first row's time."""
        for start, stop in segments(len(stream), first, self.cfg.every_events):
            t = float(stream.time[start])
            self.advance(stream, stream.before(t))
            yield TeacherVersion(start, stop, t, self.trained_until, self.teacher)

    def advance(self, stream: StreamRows, upto: int) -> None:
        """Fine-tune every member on stream rows ``[trained_rows, upto)`` (plus replay); ``upto`` only grows."""
        if upto <= self.trained_rows:
            return
        inputs, targets = self._training_windows(stream, self.trained_rows, upto)
        for k, model in enumerate(self.teacher.models):
            refresh_member(model, inputs, targets, self.cfg, seed=self.cfg.seed + 1000 * self.refreshes + k)
        self.trained_until = float(stream.time[upto - 1])
        self.trained_rows = upto
        self.refreshes += 1

    def _training_windows(self, stream: StreamRows, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        new_inputs, new_targets = stream.windows(np.arange(lo, hi))
        n_replay = int(round(self.cfg.replay * (hi - lo)))
        if n_replay == 0:
            return new_inputs, new_targets
        rng = np.random.default_rng(self.cfg.seed + hi)
        pool = len(self._replay_picks) + lo  # training-period events, then the stream rows already trained on
        picks = rng.choice(pool, size=min(n_replay, pool), replace=False)
        old = picks[picks < len(self._replay_picks)]
        seen = picks[picks >= len(self._replay_picks)] - len(self._replay_picks)
        parts = [(new_inputs, new_targets), stream.windows(seen)]
        if len(old):
            parts.append(prefix_windows(self.replay_sequences, stream.seq.size(1), self._replay_picks[old]))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def mark_seen(model: EditableSeqRec, items: torch.Tensor) -> int:
    """A side-view model starts trained ID rows for ``items`` it has never trained on (rows at zero, so the
    item scores as its LLM view did); returns how many items that was."""
    if model.side is None:
        return 0
    ids = torch.unique(items[items > 0])
    new = ids[~model.side.seen[ids]]
    with torch.no_grad():
        model.encoder.item_embedding.weight[new] = 0.0
        model.side.seen[new] = True
    model._table = None  # the cached inference table is keyed on the weights, not on ``seen``
    return len(new)


def refresh_member(model: EditableSeqRec, inputs: torch.Tensor, targets: torch.Tensor, cfg: RefreshConfig,
                   seed: int) -> None:  # fmt: skip
    """Warm-started next-item fine-tuning of one member on ``(inputs, targets)`` windows, in place."""
    mark_seen(model, torch.cat([inputs.reshape(-1), targets.reshape(-1)]))
    torch.manual_seed(seed)  # dropout: the same refresh on the same events gives the same weights
    weights = (targets > 0).sum(1).numpy()
    settings = LoopSettings(epochs=cfg.epochs, batch_size=cfg.batch_size, grad_clip=cfg.grad_clip, patience=1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    fit(model, training_loss(model), lambda idx: (inputs[idx], targets[idx]), weights, None, opt, settings, seed,
        desc="refresh", progress=False)  # fmt: skip
