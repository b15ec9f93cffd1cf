"""The per-request distilled edit: the device reproduces the cloud teacher for the current history.

For each row the cloud solves, in the device's item space, for the query shift ``δ`` that minimises the
cross-entropy from the teacher's distribution to ``softmax(item_table · (q + δ))`` — convex in ``δ`` — and
ships ``δ`` as the bias edit of the head's last layer (D floats): the last layer is linear, so its bias edit
moves the query by exactly ``δ``. The solve starts from the device's own query (:meth:`EditableHead.forward`)
and steps ``δ`` with the cross-entropy's closed-form gradient (nothing touches the models' weights); each
step projects ``δ`` into the edit's clip box, so the device applies exactly the solved edit (a test checks
the device's own path with the edit reproduces the teacher).
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field

from recsys.config import StrictConfig
from recsys.models import EditableSeqRec, HeadEdit


class DistillConfig(StrictConfig):
    """Solver settings: a fixed number of batched Adam steps (on the CPU) and the edit's clip."""

    model_config = ConfigDict(frozen=True)  # with the base's: an unknown key is an error

    steps: int = Field(60, ge=1, description="Adam steps per batch")
    lr: float = Field(0.05, gt=0, description="Adam learning rate")
    clip: float = Field(1.0, gt=0, description="the edit's clip (HeadEdit.clip): δ stays in [-clip, clip]")


def last_bias_edit(delta: torch.Tensor, n_layers: int, clip: float) -> HeadEdit:
    """``delta`` ``[B, D]`` as a head edit whose only entry is the last layer's bias (the rest ``None``)."""
    return HeadEdit([None] * n_layers, [None] * (n_layers - 1) + [delta], clip=clip)


def solve_query_delta(
    model: EditableSeqRec, states: torch.Tensor, teacher_log_probs: torch.Tensor, cfg: DistillConfig,
    items: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, D]`` query shifts for user ``states`` ``[B, D]`` that bring the device to the teacher, the device
    scoring against ``items`` (default its own table; the table + item delta where the device holds one).

    The head's last layer is linear and a bias edit adds to its output, so the edited query is
    ``head(state) + δ`` and the cross-entropy's gradient in ``δ`` is ``(softmax(q · items) − target) · items``
    over the real items: computed directly (two matrix products per step, no autograd graph), with Adam and
    the projection into the clip box after each step.
    """
    if teacher_log_probs.shape != (len(states), model.n_items):
        raise ValueError(f"teacher log-probs of shape {tuple(teacher_log_probs.shape)}, the device scores "
                         f"{len(states)} rows × {model.n_items} items")  # fmt: skip
    with torch.no_grad():
        target = torch.softmax(teacher_log_probs.float(), dim=-1)[:, 1:]
        items = (model.item_embeddings if items is None else items).detach()[1:]
        base = model.head(states.detach())  # the device's own query; the edit adds δ to it
        delta = torch.zeros_like(base, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=cfg.lr)
        for _ in range(cfg.steps):
            delta.grad = (torch.softmax((base + delta) @ items.T, dim=-1) - target) @ items
            opt.step()
            delta.clamp_(-cfg.clip, cfg.clip)
    return delta.detach()


def distilled_edit(
    model: EditableSeqRec,
    item_seq: torch.Tensor,
    item_len: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    cfg: DistillConfig | None = None,
    states: torch.Tensor | None = None,
    items: torch.Tensor | None = None,
) -> HeadEdit:
    """The per-row edit ``[B, D]`` (last layer's bias only) that makes the device reproduce the teacher;
    ``states``: the histories' user states ``[B, D]`` where the caller has them (the device sent them), else
    encoded here; ``items``: the table the device scores with (None: its own)."""
    cfg = cfg or DistillConfig()
    was_training = model.training
    model.eval()
    try:
        if states is None:
            with torch.no_grad():
                states = model.user_state(item_seq, item_len)
        delta = solve_query_delta(model, states, teacher_log_probs, cfg, items)
    finally:
        model.train(was_training)
    return last_bias_edit(delta, len(model.head.layers), cfg.clip)
