"""The item-table delta: what the cloud knows about items, in the device's own item space, for every ranking.

The per-request edit (:mod:`llm_cloud.distill`) moves one user's query, for one request. This moves item rows,
for every user and every event, with no request: the device fetches it with the bank
(``PrototypeSnapshot.item_delta``, per version) and scores with ``table + delta`` (its encoder keeps reading the
table it was trained with). The cloud fits it to the teacher over histories it has seen before the version's
time: for the device's queries ``Q`` ``[N, D]`` (its head's output for each history) and the teacher's
distributions ``P`` ``[N, I]``, ``Δ`` minimises ``mean CE(P, softmax(Q (E + Δ)ᵀ)) + l2/2 ‖Δ‖²`` — convex in
``Δ``, its gradient ``(softmax − P)ᵀ Q / N + l2 Δ`` in closed form. With ``rows`` set, only the rows that move
most are kept (bytes on the wire) and refitted alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from recsys.models import EditableSeqRec


class ItemDeltaConfig(BaseModel):
    """Solver settings of the item-table delta."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # defaults: the best of 12 settings on ml-100k's later validation half, fitted on its earlier half
    # (docs/teacher.md, "The item delta")
    rows: int | None = Field(None, ge=1, description="item rows kept (the largest changes); None: every row")
    steps: int = Field(300, ge=1, description="full-batch Adam steps, per phase (all rows, then the kept ones)")
    lr: float = Field(0.03, gt=0, description="Adam learning rate")
    l2: float = Field(1e-4, ge=0, description="pull toward no change")


@dataclass(frozen=True)
class ItemDelta:
    """New values added to rows ``ids`` ``[M]`` of the device's scoring table: ``rows`` ``[M, D]``."""

    ids: torch.Tensor
    rows: torch.Tensor

    def table(self, items: torch.Tensor) -> torch.Tensor:
        """``items`` ``[I, D]`` with the delta added (a new tensor)."""
        return items.detach().clone().index_add_(0, self.ids, self.rows)


def fit_item_delta(
    model: EditableSeqRec, states: torch.Tensor, teacher_log_probs: torch.Tensor, cfg: ItemDeltaConfig | None = None
) -> ItemDelta:
    """The delta of ``model``'s scoring table that brings its rankings of the user ``states`` ``[N, D]`` toward
    the teacher's ``teacher_log_probs`` ``[N, I]``, on at most ``cfg.rows`` item rows."""
    cfg = cfg or ItemDeltaConfig()
    with torch.no_grad():
        queries = model.head(states)
    items = model.item_embeddings.detach()
    target = teacher_log_probs.exp()
    keep = torch.ones(len(items), 1)
    keep[0] = 0  # the padding id is never scored
    delta = _solve(queries, items, target, torch.zeros_like(items), keep, cfg)
    if cfg.rows is None or cfg.rows >= len(items) - 1:
        ids = torch.arange(1, len(items))
        return ItemDelta(ids, delta[ids])
    ids = torch.topk(delta.norm(dim=1), cfg.rows).indices.sort().values
    keep = torch.zeros(len(items), 1)
    keep[ids] = 1
    delta = _solve(queries, items, target, torch.zeros_like(items), keep, cfg)
    return ItemDelta(ids, delta[ids])


def _solve(queries, items, target, delta, keep, cfg: ItemDeltaConfig) -> torch.Tensor:
    """``cfg.steps`` Adam steps on ``delta`` (rows where ``keep`` is 0 stay 0) with the closed-form gradient."""
    delta = torch.nn.Parameter(delta)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    with torch.no_grad():
        for _ in range(cfg.steps):
            logits = queries @ (items + delta).T
            logits[:, 0] = float("-inf")
            grad = (torch.softmax(logits, dim=-1) - target).T @ queries / len(queries) + cfg.l2 * delta
            delta.grad = grad * keep
            opt.step()
    return delta.detach()
