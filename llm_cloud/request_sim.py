"""Request policies over a stream, offline: which events ask the cloud, and what the device holds between.

Every row of a stream (one user event, :class:`llm_cloud.stream.StreamRows`) may ask the cloud for a
fresh edit ``deltas[row]`` (the distilled last-layer bias, :mod:`llm_cloud.distill`) — or for the teacher's
top-k list. A row that does not ask reuses what its user's last asking row received (``holder``); before a
user's first ask the device ranks alone. Policies: ``random`` at a rate; the ``oracle`` (asks where the fresh
edit beats the one held from the user's previous row most, known only afterwards); the ``detector`` (a ridge
regression of that gain on what the device knows, asking above the running quantile for the rate), simulated
user by user in event order because what it sees depends on what it asked before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llm_cloud.distill import last_bias_edit
from recsys import metrics, ood
from recsys.models import EditableSeqRec

FEATURES = ("log_age", "drift", "entropy", "margin", "top10_agreement", "new_items", "has_edit")
NO_EDIT_AGE = 1000  # the age a device without any edit reports


def holders(asks: np.ndarray, previous: np.ndarray, ttl: int | None = None) -> np.ndarray:
    """``[N]`` the row whose answer the device holds at each row (itself if it asked; ``-1``: none yet), an
    answer being kept for ``ttl`` more events of its user (None: until the next ask)."""
    out = np.full(len(asks), -1, dtype=np.int64)
    for j in range(len(asks)):
        out[j] = j if asks[j] else (out[previous[j]] if previous[j] >= 0 else -1)
    return out if ttl is None else expired(out, np.arange(len(out)), user_positions(previous), ttl)


def expired(hold: np.ndarray, rows: np.ndarray, positions: np.ndarray, ttl: int | None) -> np.ndarray:
    """``hold`` (answers held at ``rows``) with those older than ``ttl`` events of their user dropped (``-1``)."""
    if ttl is None:
        return hold
    age = positions[rows] - positions[np.maximum(hold, 0)]
    return np.where((hold >= 0) & (age <= ttl), hold, -1)


def user_positions(previous: np.ndarray) -> np.ndarray:
    """``[N]`` each row's position among its user's rows (0 for a user's first)."""
    out = np.zeros(len(previous), dtype=np.int64)
    for j, p in enumerate(previous.tolist()):
        out[j] = 0 if p < 0 else out[p] + 1
    return out


def random_asks(n: int, rate: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < rate


def oracle_asks(gain: np.ndarray, rate: float, seed: int = 0) -> np.ndarray:
    """The ``rate`` share of rows with the largest ``gain`` (ties in random order)."""
    n_ask = int(round(rate * len(gain)))
    order = np.lexsort((np.random.default_rng(seed).random(len(gain)), -gain))
    asks = np.zeros(len(gain), dtype=bool)
    asks[order[:n_ask]] = True
    return asks


@dataclass
class DeviceView:
    """What one device model computes for every row of a stream, and its rankings with held edits."""

    model: EditableSeqRec
    states: torch.Tensor  # [N, D] user states
    targets: torch.Tensor  # [N]
    new_items: torch.Tensor  # [N] history items the device never trained on
    batch: int = 2048
    items: torch.Tensor | None = None  # the table it scores with (None: its own; else with the item delta)

    @classmethod
    @torch.no_grad()
    def build(cls, model: EditableSeqRec, seq, length, targets, seen: torch.Tensor, batch: int = 2048,
              items: torch.Tensor | None = None) -> DeviceView:  # fmt: skip
        model.eval()
        states = torch.cat([model.user_state(seq[i : i + batch], length[i : i + batch])
                            for i in range(0, len(seq), batch)])  # fmt: skip
        unseen = (~seen[seq]) & (seq > 0)
        return cls(model, states, targets, unseen.sum(1).float(), batch, items)

    @torch.no_grad()
    def scores(self, rows: torch.Tensor, deltas: torch.Tensor | None) -> torch.Tensor:
        """``[B, n_items]`` the device's scores at ``rows`` with per-row bias edits (``None``: alone)."""
        edit = None if deltas is None else last_bias_edit(deltas, len(self.model.head.layers), clip=float("inf"))
        return self.model.logits(self.model.head(self.states[rows], edit), self.items)

    def row_batches(self) -> tuple[torch.Tensor, ...]:
        return torch.arange(len(self.targets)).split(self.batch)

    def ranks(self, deltas: torch.Tensor | None, holder: np.ndarray | None = None) -> torch.Tensor:
        """``[N]`` target ranks with the edit each row holds (``deltas[holder]``; ``holder=-1``: none)."""
        return torch.cat([metrics.target_rank(self.scores(rows, held(deltas, holder, rows)), self.targets[rows])
                          for rows in self.row_batches()])  # fmt: skip

    def list_ranks(self, lists: torch.Tensor, holder: np.ndarray) -> torch.Tensor:
        """``[N]`` target ranks when the device shows the held top-k list first (in its order), then its own."""
        out = []
        for rows in self.row_batches():
            scores = self.scores(rows, None)
            h = torch.as_tensor(holder[rows.numpy()])
            mine = torch.nonzero(h >= 0).view(-1)
            if len(mine):
                top = lists[h[mine]]
                boost = scores[:, 1:].abs().max() + 1 + torch.arange(top.size(1), 0, -1, dtype=scores.dtype)
                scores[mine.unsqueeze(1), top] = boost
            out.append(metrics.target_rank(scores, self.targets[rows]))
        return torch.cat(out)


def held(deltas: torch.Tensor | None, holder: np.ndarray | None, rows: torch.Tensor) -> torch.Tensor | None:
    """Each row's held edit (zeros where none: a zero bias edit is the unedited head)."""
    if deltas is None:
        return None
    if holder is None:
        return deltas[rows]
    h = torch.as_tensor(holder[rows.numpy()])
    return torch.where((h >= 0).unsqueeze(1), deltas[h.clamp(min=0)], torch.zeros(()))


def features(view: DeviceView, deltas: torch.Tensor, rows: torch.Tensor, hold: np.ndarray,
             positions: np.ndarray) -> np.ndarray:  # fmt: skip
    """``[B, len(FEATURES)]`` what the device knows at ``rows`` holding the edits of rows ``hold``."""
    rows_np = rows.numpy()
    has = hold >= 0
    age = np.where(has, positions[rows_np] - positions[np.maximum(hold, 0)], NO_EDIT_AGE)
    mine, ref = view.states[rows], view.states[torch.as_tensor(np.maximum(hold, 0))]
    drift = torch.where(torch.as_tensor(has), 1 - torch.cosine_similarity(mine, ref, dim=-1), torch.ones(()))
    scores = view.scores(rows, held(deltas, hold, torch.arange(len(rows))) if deltas is not None else None)
    entropy = ood.entropy(scores)
    scores = scores[:, 1:]  # the padding column is -inf
    top2 = scores.topk(2, dim=-1).values
    base_top = view.scores(rows, None)[:, 1:].topk(10, dim=-1).indices
    agree = (scores.topk(10, dim=-1).indices.unsqueeze(2) == base_top.unsqueeze(1)).any(2).float().mean(1)
    cols = [np.log1p(age), drift.numpy(), entropy.numpy(), (top2[:, 0] - top2[:, 1]).numpy(), agree.numpy(),
            view.new_items[rows].numpy(), has.astype(np.float64)]  # fmt: skip
    return np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1)


def features_of_rows(view: DeviceView, deltas: torch.Tensor | None, hold: np.ndarray,
                     positions: np.ndarray) -> np.ndarray:  # fmt: skip
    """:func:`features` of every row, in the view's batches."""
    return np.concatenate([features(view, deltas, rows, hold[rows.numpy()], positions) for rows in view.row_batches()])


@dataclass
class Detector:
    """Ridge regression of the fresh edit's gain on :data:`FEATURES` (standardised)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # [F + 1], the last the intercept

    @classmethod
    def fit(cls, x: np.ndarray, gain: np.ndarray, ridge: float = 1.0) -> Detector:
        mean, scale = x.mean(0), x.std(0) + 1e-8
        z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
        reg = ridge * np.eye(z.shape[1])
        reg[-1, -1] = 0.0
        return cls(mean, scale, np.linalg.solve(z.T @ z + reg, z.T @ gain))

    def score(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.weights[:-1] + self.weights[-1]


def before_asking(holder: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``[N]`` the row whose answer the device holds when it decides at each row (before it may ask)."""
    return np.where(previous >= 0, holder[np.maximum(previous, 0)], -1)


def fresh_gain(view: DeviceView, deltas: torch.Tensor, hold: np.ndarray) -> np.ndarray:
    """``[N]`` NDCG@10 of a fresh edit minus that of the held one (known only afterwards)."""
    return (metrics.ndcg(view.ranks(deltas)) - metrics.ndcg(view.ranks(deltas, hold))).numpy()


def training_set(view: DeviceView, deltas: torch.Tensor, previous: np.ndarray, ttl: int | None = None,
                 rate: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Features and fresh-edit gains under a random policy at ``rate`` (held edits of every age occur)."""
    positions = user_positions(previous)
    rows = np.arange(len(previous))
    hold = expired(before_asking(holders(random_asks(len(previous), rate, seed), previous, ttl), previous), rows,
                   positions, ttl)  # fmt: skip
    return features_of_rows(view, deltas, hold, positions), fresh_gain(view, deltas, hold)


def detector_holders(view: DeviceView, deltas: torch.Tensor, detector: Detector, rate: float,
                     previous: np.ndarray, ttl: int | None = None, window: int = 512) -> np.ndarray:  # fmt: skip
    """The holders under the detector policy, simulated in waves of each user's k-th event: a row asks when
    its score is above the ``1 - rate`` quantile of the last ``window`` scores (as the served drift policy)."""
    positions = user_positions(previous)
    holder = np.full(len(previous), -1, dtype=np.int64)
    recent = np.zeros(0)
    for k in range(int(positions.max()) + 1 if len(positions) else 0):
        rows = np.flatnonzero(positions == k)
        hold = expired(before_asking(holder, previous)[rows], rows, positions, ttl)
        score = detector.score(features(view, deltas, torch.as_tensor(rows), hold, positions))
        recent = np.concatenate([recent, score])[-window:]
        ask = score > np.quantile(recent, 1 - rate) if 0 < rate < 1 else np.full(len(rows), rate >= 1)
        holder[rows] = np.where(ask, rows, hold)
    return holder
