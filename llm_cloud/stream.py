"""The event stream a cloud receives, as RecBole rows in time order.

Under the shift protocol every validation and test row is one event — ``(user, item, time)`` — with the
user's history before it (``item_id_list``/``item_length``); rows are ordered by the event's time. The
fresh teacher trains on the rows before a time, the request policies walk each user's rows in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from recbole.data.interaction import Interaction


@dataclass(frozen=True)
class StreamRows:
    """``N`` events in time order: history ``seq [N, L]`` (right-padded) of ``length [N]``, the event's item
    ``target [N]``, its ``time [N]`` and ``user [N]``."""

    seq: torch.Tensor
    length: torch.Tensor
    target: torch.Tensor
    time: np.ndarray
    user: np.ndarray

    def __post_init__(self):
        if len(self.time) and bool(np.any(np.diff(self.time) < 0)):
            raise ValueError("stream rows must be in time order")

    @classmethod
    def from_rows(cls, rows: Interaction, user_field: str = "user_id", time_field: str = "timestamp") -> StreamRows:
        return cls(rows["item_id_list"], rows["item_length"], rows["item_id"],
                   rows[time_field].numpy().astype(np.float64), rows[user_field].numpy())  # fmt: skip

    @classmethod
    def concat(cls, parts: list[StreamRows]) -> StreamRows:
        return cls(torch.cat([p.seq for p in parts]), torch.cat([p.length for p in parts]),
                   torch.cat([p.target for p in parts]), np.concatenate([p.time for p in parts]),
                   np.concatenate([p.user for p in parts]))  # fmt: skip

    def __len__(self) -> int:
        return len(self.time)

    def part(self, lo: int, hi: int) -> StreamRows:
        """Rows ``[lo, hi)``."""
        return StreamRows(self.seq[lo:hi], self.length[lo:hi], self.target[lo:hi], self.time[lo:hi], self.user[lo:hi])

    def before(self, t: float) -> int:
        """The number of rows whose event happened strictly before ``t`` (they are a prefix)."""
        return int(np.searchsorted(self.time, t, side="left"))

    def previous(self) -> np.ndarray:
        """``[N]`` index of the same user's previous row in this stream (``-1`` for a user's first)."""
        out = np.full(len(self), -1, dtype=np.int64)
        last: dict[int, int] = {}
        for i, u in enumerate(self.user.tolist()):
            out[i] = last.get(u, -1)
            last[u] = i
        return out

    def windows(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Training windows of rows ``idx``: ``inputs`` = the history, ``targets`` = the event at its last position."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.seq[idx], last_position_targets(self.length[idx], self.target[idx], self.seq.size(1))


def last_position_targets(length: torch.Tensor, target: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` zeros except ``target`` at position ``length - 1`` (the next-item loss of that event only)."""
    out = torch.zeros(len(length), width, dtype=torch.long)
    out[torch.arange(len(length)), (length - 1).clamp(min=0)] = target
    return out


def prefix_windows(sequences: list[np.ndarray], max_len: int, picks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows for events of training-period ``sequences``: ``picks [K, 2]`` = (sequence, position ≥ 1);
    the input is up to ``max_len`` items before the position, the target the item at it."""
    inputs = torch.zeros(len(picks), max_len, dtype=torch.long)
    length = torch.zeros(len(picks), dtype=torch.long)
    target = torch.zeros(len(picks), dtype=torch.long)
    for row, (s, p) in enumerate(picks.tolist()):
        hist = sequences[s][max(0, p - max_len) : p]
        inputs[row, : len(hist)] = torch.from_numpy(np.asarray(hist, dtype=np.int64))
        length[row], target[row] = len(hist), int(sequences[s][p])
    return inputs, last_position_targets(length, target, max_len)
