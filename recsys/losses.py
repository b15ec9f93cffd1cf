"""Training losses of the device models: full-softmax cross-entropy over the catalogue through the head.

:class:`PositionLossSum` is next-item prediction at every position (SASRec's and GRU4Rec's objective);
a model may bring its own (``ModelSpec.loss``: BERT4Rec's cloze loss) built on :func:`catalogue_ce_sum`.
Losses are sums over the batch's loss terms; :func:`recsys.loop.fit` divides by the sample weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def catalogue_ce_sum(model: nn.Module, states: torch.Tensor, targets: torch.Tensor,
                     items: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Summed cross-entropy of ``targets`` ``[N]`` under ``head(states)`` ``[N, D]`` scored against ``items``.

    With side views that leave unseen items out of the softmax (``unseen_negatives=False``) those items
    are masked, except any that is a target here.
    """
    logits = model.logits(model.head(states), items)
    left_out = model.side.training_mask() if model.side is not None else None
    if left_out is not None:
        left_out = left_out.clone()
        left_out[targets] = False
        logits = logits.masked_fill(left_out, float("-inf"))
    return F.cross_entropy(logits, targets, reduction="sum")


def used_width(mask: torch.Tensor) -> int:
    """Columns up to the last one where any row of ``mask`` ``[B, T]`` is set (at least 1): trailing padding
    columns carry no loss term, and cost as much as real ones."""
    return max(int(mask.any(0).nonzero().max()) + 1, 1) if mask.any() else 1


class PositionLossSum(nn.Module):
    """Summed next-item cross-entropy over the non-padding positions of a batch of windows."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mask = targets > 0
        width = used_width(mask)
        inputs, targets, mask = inputs[:, :width], targets[:, :width], mask[:, :width]
        items = self.model.item_embeddings  # one table per batch (side views drop ID views per batch)
        states = self.model.position_states(inputs, items)
        return catalogue_ce_sum(self.model, states[mask], targets[mask], items)


def training_loss(model: nn.Module) -> nn.Module:
    """The loss a model trains with: its spec's, else next-item at every position."""
    return model.spec.loss(model) if model.spec.loss is not None else PositionLossSum(model)
