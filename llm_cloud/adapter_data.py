"""Adapter inputs from RecBole rows or training sequences: windows, semantic codes, frozen user states,
user-context hits (:class:`llm_cloud.context_hits.UserContextHits`, computed from the window per batch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llm_cloud.adapter import left_padded_windows
from llm_cloud.context_hits import UserContextHits
from recsys.models import EditableSeqRec
from recsys.train import make_windows


@dataclass
class AdapterBatch:
    window: torch.Tensor  # [B, N] left-padded recent items
    codes: torch.Tensor | None  # [B, N, levels] semantic codes (+1; 0 = padding)
    state: torch.Tensor  # [B, D] the frozen base model's user state
    targets: torch.Tensor | None = None  # [B, n_future] next items (0 = none)
    context: torch.Tensor | None = None  # [B, levels] codebook hits of the user context (+1; 0 = none)


def code_lookup(window: torch.Tensor, code_table: torch.Tensor | None) -> torch.Tensor | None:
    return None if code_table is None else code_table[window]


def context_lookup(window: torch.Tensor, context: UserContextHits | None) -> torch.Tensor | None:
    return None if context is None else context(window)


@torch.inference_mode()
def batch_from_rows(
    base: EditableSeqRec, rows, n_window: int, code_table: torch.Tensor | None, context: UserContextHits | None = None
) -> AdapterBatch:
    """Adapter inputs for RecBole evaluation rows (``item_id_list``, ``item_length``)."""
    seq, length = rows["item_id_list"], rows["item_length"]
    window = left_padded_windows(seq, length, n_window)
    state = base.user_state(seq, length).clone()
    return AdapterBatch(window, code_lookup(window, code_table), state, context=context_lookup(window, context))


@torch.inference_mode()
def row_states(base: EditableSeqRec, rows, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(states [R, D], next items [R])`` of RecBole evaluation rows under the frozen base model."""
    states = [base.user_state(rows[s : s + batch]["item_id_list"], rows[s : s + batch]["item_length"]).clone()
              for s in range(0, len(rows), batch)]
    return torch.cat(states), rows["item_id"].clone()


@dataclass
class TrainingSamples:
    """Every training-period position as an adapter sample; states precomputed with the frozen base."""

    window: torch.Tensor
    state: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.window)

    def batch(
        self, idx: torch.Tensor, code_table: torch.Tensor | None, context: UserContextHits | None = None
    ) -> AdapterBatch:
        w = self.window[idx]
        hits = context_lookup(w, context)
        return AdapterBatch(w, code_lookup(w, code_table), self.state[idx], self.targets[idx], hits)

    def subset(self, n: int | None, seed: int) -> TrainingSamples:
        """At most ``n`` samples drawn without replacement (time order kept); ``self`` when ``n`` covers all."""
        if n is None or n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        idx = torch.from_numpy(keep).to(self.window.device)
        return TrainingSamples(self.window[idx], self.state[idx], self.targets[idx])


@torch.inference_mode()
def training_samples(
    base: EditableSeqRec,
    sequences: list[np.ndarray],
    n_window: int,
    n_future: int,
    chunk: int = 512,
) -> TrainingSamples:
    """One sample per training target: the window before it, the base state there, the next items.

    Tensors live on the base model's device.
    """
    base.eval()
    device = base.item_embeddings.device
    x, y = make_windows(sequences, base.max_seq_len)
    x, y = x.to(device), y.to(device)
    rows, cols = torch.nonzero(y > 0, as_tuple=True)
    states = torch.empty(len(rows), base.head.dim, device=device)
    for start in range(0, len(x), chunk):  # all positions of a chunk of windows in one pass
        sel = (rows >= start) & (rows < start + chunk)
        if sel.any():
            s = base.position_states(x[start : start + chunk])
            states[sel] = s[rows[sel] - start, cols[sel]]
    window = left_padded_windows(x[rows], cols + 1, n_window)
    fut = cols.view(-1, 1) + torch.arange(n_future, device=device).view(1, -1)
    targets = y[rows.view(-1, 1), fut.clamp(max=y.size(1) - 1)] * (fut < y.size(1))
    return TrainingSamples(window, states, targets)
