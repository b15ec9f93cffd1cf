"""What a dynamic prototype bank learns while the test period streams in (the cloud's ``serve.cloud.dynamic_bank``,
the ``proto-dyn`` and ``served-dyn`` methods).

Answered windows, in time order, pull their prototype's centre, head and signature along (:func:`refine`),
and out-of-distribution ones open a new prototype while the bank has room (:func:`spawn`): both through
:func:`absorb_rows`. Once devices have consumed their next items, the outcomes count into the OOD score's
per-prototype miss rates (:func:`observe`), and with ``online_lr`` the consumed items train the assigned
prototypes' heads, one Adam step per answered batch (:func:`learn`, :func:`recsys.loop.optimizer_step`).
"""

from __future__ import annotations

import torch

from llm_cloud.prototypes import PrototypeBank, PrototypeHeads
from recsys.loop import optimizer_step
from recsys.models import EditableSeqRec


def observe(bank: PrototypeBank, k: torch.Tensor, miss: torch.Tensor) -> None:
    """Count streamed rows' outcomes (did the base model miss what came next?) toward prototypes ``k``."""
    bank.miss.index_add_(0, k, miss.float())
    bank.seen.index_add_(0, k, torch.ones_like(miss, dtype=bank.seen.dtype))


@torch.no_grad()
def refine(bank: PrototypeBank, k: int, code: torch.Tensor, sample_parts: list[torch.Tensor],
           state: torch.Tensor) -> None:
    """Move prototype ``k`` toward an assigned device: centre, head and signature.

    ``refine_rate`` None: running mean over everything the prototype has absorbed (its training cluster
    counts as ``counts[k]`` samples), so a burst of one device's requests cannot drag it away; a
    number: a fixed-rate moving average (recent windows dominate).
    """
    rate = bank.cfg.refine_rate if bank.cfg.refine_rate is not None else 1.0 / (float(bank.counts[k]) + 1.0)
    bank.centres[k] += rate * (code - bank.centres[k])
    bank.signatures[k] += rate * (state - bank.signatures[k])
    for part, target in zip(sample_parts, bank.weights + bank.biases):
        target[k] += rate * (part - target[k])
    bank.counts[k] += 1


def spawn(bank: PrototypeBank, code: torch.Tensor, sample_parts: list[torch.Tensor], state: torch.Tensor) -> int | None:
    """Open a prototype at an out-of-distribution code with its own edit ``sample_parts``; ``None`` when the
    bank is full (or does not spawn)."""
    if not bank.cfg.spawn or bank.size >= bank.cfg.max_k:
        return None
    grow = lambda t, row: torch.cat([t, row.unsqueeze(0)])
    bank.centres, bank.signatures = grow(bank.centres, code.view(-1)), grow(bank.signatures, state.view(-1))
    bank.counts = grow(bank.counts, torch.ones((), device=bank.counts.device))
    bank.miss = grow(bank.miss, torch.zeros((), device=bank.miss.device))  # starts at the prior
    bank.seen = grow(bank.seen, torch.zeros((), device=bank.seen.device))
    if bank.cache_gain is not None:  # no held-out evidence for it yet: not served from a device's cache
        bank.cache_gain = grow(bank.cache_gain, torch.zeros((), device=bank.cache_gain.device))
    parts = [grow(t, part) for t, part in zip(bank.weights + bank.biases, sample_parts)]
    bank.weights, bank.biases = parts[: bank.n_layers], parts[bank.n_layers :]
    bank.spawned += 1
    return bank.size - 1


def absorb_rows(bank: PrototypeBank, k: torch.Tensor, ood_rows: torch.Tensor, flat: torch.Tensor,
                parts: list[torch.Tensor], state: torch.Tensor) -> None:
    """Take in answered windows (in time order): an out-of-distribution one opens a new prototype with its
    own edit ``parts`` while the bank has room (:func:`spawn`), every other one moves its nearest
    prototype ``k`` toward it (:func:`refine`)."""
    with torch.no_grad():
        for i in range(len(flat)):
            row = [p[i] for p in parts]
            if bool(ood_rows[i]) and spawn(bank, flat[i], row, state[i]) is not None:
                continue
            refine(bank, int(k[i]), flat[i], row, state[i])


def learn(bank: PrototypeBank, base: EditableSeqRec, k: torch.Tensor, state: torch.Tensor,
          target: torch.Tensor) -> float | None:
    """Prequential refinement in the cloud: once a batch has been answered, the items its devices went on
    to consume train the heads of the prototypes they were assigned to (one Adam step, rate
    ``online_lr``); later requests get the refined heads. Returns the loss (None when disabled)."""
    if bank.cfg.online_lr is None or len(k) == 0:
        return None
    with torch.inference_mode(False), torch.enable_grad():
        if bank.learner is None or bank.learner[0] != bank.size:  # (re)start after a spawn changed the shapes
            heads = PrototypeHeads(base, [p.detach().clone() for p in bank.weights + bank.biases],
                                   bank.cfg.total_clip)  # fmt: skip
            bank.learner = (bank.size, heads, torch.optim.Adam(heads.parameters(), lr=bank.cfg.online_lr))
            parts = list(heads.parts)  # the bank's heads are now the learner's parameters
            bank.weights, bank.biases = parts[: bank.n_layers], parts[bank.n_layers :]
        _, heads, opt = bank.learner
        k, state, target = k.clone(), state.clone(), target.clone()
        loss = optimizer_step(opt, heads(state, target, k) / len(k))
        with torch.no_grad():
            for part in heads.parts:
                part.clamp_(-bank.cfg.total_clip, bank.cfg.total_clip)
    return float(loss)
