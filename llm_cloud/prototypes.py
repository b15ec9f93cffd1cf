"""The prototype bank's state, assignment and edit; the OOD score it carries.

Codes are stored layer-major (``[z_1 … z_L]`` flattened), the layout they are clustered in. Every
prototype k has a centre, a head edit ``E_k`` relative to the base head (``finetune``: the base head
fine-tuned on its cluster; ``centre``: the adapter's edit of the centre code), and a signature in the
device model's user-state space (mean state of its cluster) so a device can pick its prototype with
no cloud call. A device is served ``E_k + clip(residual)``, the residual being its own edit minus the
centre's. Out of distribution means a high :mod:`recsys.ood` score (the base model's entropy + its nearest
prototype's miss rate: :func:`ood_scores`); ``cache_gain`` says, per prototype, what its cached edit does
on its own — the device's path when the cloud is slow or down — and the snapshot tells the device to cache
only the edits that gained (:func:`cache_ok`).

Building a bank (k-means, fine-tuned heads, the OOD score's fit, the cache gain) is
:mod:`llm_cloud.prototype_build`; what a dynamic bank learns while the test period streams in (refine,
spawn, outcomes, prequential steps) is :mod:`llm_cloud.prototype_online`.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from llm_cloud.adapter_config import PrototypeConfig
from recsys import ood
from recsys.models import EditableSeqRec, HeadEdit
from recsys.wire import EditDecoder, EditPayload, PrototypeSnapshot, prototype_plus_residual


def clipped_parts(edit: HeadEdit, c: float) -> list[torch.Tensor]:
    """Weights and biases of a full edit, clipped, as ``[dW_1 … dW_L, db_1 … db_L]``."""
    return [w.clamp(-c, c) for w in edit.dW] + [b.clamp(-c, c) for b in edit.db]


class PrototypeBank:
    """Prototypes as tensors: ``centres [K, L·dz]``, ``weights[l] [K, D, D]``, ``biases[l] [K, D]``; the
    state, the assignment of codes / edits / user states to prototypes, and the edit each is served."""

    def __init__(self, cfg: PrototypeConfig, n_layers: int, code_dim: int, adapter_clip: float):
        self.cfg, self.n_layers, self.code_dim, self.adapter_clip = cfg, n_layers, code_dim, adapter_clip
        self.centres = torch.empty(0, n_layers * code_dim)
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.signatures = torch.empty(0)
        self.counts = torch.empty(0)
        self.miss = torch.empty(0)  # per prototype: base-model misses among its calibration / streamed rows
        self.seen = torch.empty(0)  # … and rows counted
        self.prior = 0.5  # bank-wide miss rate (smooths small prototypes)
        self.ood_weights: tuple[float, float, float] | None = None  # recsys.ood score: entropy, prototype, bias
        self.ood_threshold = float("inf")  # on that score (None weights: nothing is out of distribution)
        self.cache_gain: torch.Tensor | None = None  # [K] validation NDCG@10 gain of E_k alone (None: not measured)
        self.spawned = 0
        self.learner = None  # (bank size, PrototypeHeads, Adam) of prequential learning (prototype_online.learn)

    @property
    def size(self) -> int:
        return len(self.centres)

    def assign_nearest(self, flat_codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest centre (Euclidean, layer-major codes) and the distance to it."""
        dist = torch.cdist(flat_codes, self.centres)
        d, k = dist.min(dim=1)
        return k, d

    def assign_min_residual(self, edit: HeadEdit) -> torch.Tensor:
        """The prototype whose head needs the smallest residual edit ``‖clip(ΔW) − E_k‖``."""
        total = torch.zeros(edit.dW[0].size(0), self.size, device=self.centres.device)
        for i, part in enumerate(clipped_parts(edit, self.adapter_clip)):
            proto = (self.weights + self.biases)[i]
            total += torch.cdist(part.flatten(1), proto.flatten(1)) ** 2
        return total.argmin(dim=1)

    def nearest_signature(self, state: torch.Tensor) -> torch.Tensor:
        """``[B]`` the prototype whose signature is nearest each user state (what a device computes)."""
        return torch.cdist(state, self.signatures).argmin(dim=1)

    def edit_for(self, k: torch.Tensor, sample_edit: HeadEdit | None, centre_edit: HeadEdit | None) -> HeadEdit:
        """``E_k`` (+ the sample's residual ``clip(ΔW(z)) − clip(ΔW(c_k))``, clipped) as one edit."""
        protos = [p[k] for p in self.weights + self.biases]
        if sample_edit is not None and centre_edit is not None:
            r = self.cfg.residual_clip
            mine, theirs = clipped_parts(sample_edit, self.adapter_clip), clipped_parts(centre_edit, self.adapter_clip)
            protos = prototype_plus_residual(protos, mine, theirs, r)
        return HeadEdit(protos[: self.n_layers], protos[self.n_layers :], clip=self.cfg.total_clip)

    def prototype_edit(self, k: int) -> HeadEdit:
        """Prototype ``k``'s head edit ``E_k`` (relative to the base head)."""
        return HeadEdit([w[k] for w in self.weights], [b[k] for b in self.biases], clip=self.cfg.total_clip)

    def copy(self) -> PrototypeBank:
        other = PrototypeBank(self.cfg, self.n_layers, self.code_dim, self.adapter_clip)
        other.centres, other.signatures = self.centres.clone(), self.signatures.clone()
        other.counts = self.counts.clone()
        other.weights = [w.clone() for w in self.weights]
        other.biases = [b.clone() for b in self.biases]
        other.miss, other.seen, other.prior = self.miss.clone(), self.seen.clone(), self.prior
        other.ood_weights, other.ood_threshold = self.ood_weights, self.ood_threshold
        other.spawned = self.spawned
        other.cache_gain = None if self.cache_gain is None else self.cache_gain.clone()
        return other

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {"centres": self.centres, "signatures": self.signatures, "counts": self.counts}
        out["miss"], out["seen"], out["prior"] = self.miss, self.seen, torch.tensor(self.prior)
        if self.ood_weights is not None:
            out["ood_weights"] = torch.tensor(self.ood_weights, dtype=torch.float64)
        out["ood_threshold"] = torch.tensor(self.ood_threshold)
        if self.cache_gain is not None:
            out["cache_gain"] = self.cache_gain
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out[f"weight_{i}"], out[f"bias_{i}"] = w, b
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.centres, self.signatures, self.counts = state["centres"], state["signatures"], state["counts"]
        k = len(self.centres)
        self.miss, self.seen = state.get("miss", torch.zeros(k)), state.get("seen", torch.zeros(k))
        self.prior = float(state.get("prior", torch.tensor(0.5)))
        w = state.get("ood_weights")  # banks from before the calibrated score: no OOD test
        self.ood_weights = tuple(float(v) for v in w) if w is not None else None
        self.ood_threshold = float(state["ood_threshold"]) if w is not None else float("inf")
        self.weights = [state[f"weight_{i}"] for i in range(self.n_layers)]
        self.biases = [state[f"bias_{i}"] for i in range(self.n_layers)]
        self.cache_gain = state.get("cache_gain")  # banks saved before the cache gate: None (every edit cached)

    @property
    def version(self) -> str:
        h = hashlib.sha256()
        for t in self.state_dict().values():
            h.update(t.detach().cpu().numpy().tobytes())
        return f"bank-{h.hexdigest()[:12]}"

    def snapshot(self, decoder: EditDecoder | None = None, version: str | None = None) -> PrototypeSnapshot:
        """The device cache: signatures, per-prototype head edits (fp32), the OOD score (:mod:`recsys.ood`),
        and the adapter's ``decoder`` for code-encoded edits."""
        version = version or self.version
        edits = [EditPayload.from_head_edit(self.prototype_edit(k), version, k, encoding="fp32")
                 for k in range(self.size)]
        return PrototypeSnapshot(
            version=version,
            dim=int(self.signatures.size(1)),
            signatures=self.signatures.tolist(),
            edits=edits,
            ood=ood_snapshot(self),
            cache_ok=cache_ok(self),
            decoder=decoder,
        )


# ------------------------------------------------------------------ the OOD score the bank carries
def proto_logodds(bank: PrototypeBank) -> torch.Tensor:
    """``[K]`` logit of each prototype's miss rate, smoothed toward the bank-wide rate (2 rows' worth)."""
    return ood.logit((bank.miss + 2.0 * bank.prior) / (bank.seen + 2.0))


def ood_score(bank: PrototypeBank, ent: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The fitted score of rows with base-model entropy ``ent`` whose nearest signature is ``k``."""
    return ood.combine(ent, proto_logodds(bank)[k], *bank.ood_weights)


@torch.no_grad()
def ood_scores(bank: PrototypeBank, base: EditableSeqRec, state: torch.Tensor, logits: torch.Tensor | None = None):
    """``(k, score, base logits)``: nearest signature and OOD score of each state (``-inf``: uncalibrated)."""
    logits = base.logits(base.head(state, None)) if logits is None else logits
    k = bank.nearest_signature(state)
    if bank.ood_weights is None:
        return k, torch.full((len(state),), float("-inf"), device=state.device), logits
    return k, ood_score(bank, ood.entropy(logits), k), logits


def is_ood(bank: PrototypeBank, score: torch.Tensor) -> torch.Tensor:
    return score > bank.ood_threshold


def ood_snapshot(bank: PrototypeBank) -> ood.OodScore | None:
    """The OOD score as the device evaluates it (None: the bank has none)."""
    if bank.ood_weights is None or not math.isfinite(bank.ood_threshold):
        return None
    we, wp, b = bank.ood_weights
    return ood.OodScore(w_entropy=we, w_proto=wp, bias=b, proto_logodds=proto_logodds(bank).tolist(),
                        threshold=bank.ood_threshold)


def cache_ok(bank: PrototypeBank) -> list[bool]:
    """Per prototype: may a device serve its edit from the cache? Only where it gained on held-out rows
    (not measured, e.g. a bank saved before the gate: every prototype, as before)."""
    if bank.cache_gain is None:
        return [True] * bank.size
    return (bank.cache_gain > 0).tolist()


class PrototypeHeads(nn.Module):
    """Prototype head edits as trainable parameters (``parts``: ``[dW_1 … dW_L, db_1 … db_L]``) and the loss
    they are trained on, the frozen base's *summed* next-item cross-entropy under them — offline through
    :func:`recsys.loop.fit` (one cluster's edit) and online one step at a time (the bank's, rows ``k``).
    The base is held outside the module tree (frozen, not the optimiser's)."""

    def __init__(self, base: EditableSeqRec, parts: list[torch.Tensor], clip: float):
        super().__init__()
        self.parts = nn.ParameterList([nn.Parameter(p) for p in parts])
        self.clip, self._base = clip, (base,)

    def forward(self, state: torch.Tensor, target: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        base, n = self._base[0], len(self.parts) // 2
        rows = [p if k is None else p[k] for p in self.parts]
        edit = HeadEdit(rows[:n], rows[n:], clip=self.clip)
        return F.cross_entropy(base.logits(base.head(state, edit)), target, reduction="sum")
