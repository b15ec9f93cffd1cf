"""The prototype bank: k-means over adapter codes, specialised prototype heads, dynamic refinement, OOD.

Codes are stored layer-major (``[z_1 … z_L]`` flattened), the layout they are clustered in. Every
prototype k has a centre, a head edit ``E_k`` relative to the base head (``finetune``: the base head
fine-tuned on its cluster; ``centre``: the adapter's edit of the centre code), and a signature in the
device model's user-state space (mean state of its cluster) so a device can pick its prototype with
no cloud call. A device is served ``E_k + clip(residual)``, the residual being its own edit minus the
centre's. While the test period streams in, assigned codes pull their centre and head along
(``refine``), and out-of-distribution windows open a new prototype (``spawn``). Out of distribution
means a high :mod:`recsys.ood` score (the base model's entropy + its nearest prototype's miss rate,
fitted on validation rows by ``calibrate``; a dynamic bank keeps counting misses with ``observe``).
``calibrate`` also measures, per prototype, what its cached edit does on its own — the device's path when
the cloud is slow or down: nearest signature, the OOD test, ``E_k`` with no residual — against the base
head on the same validation rows (``cache_gain``); the snapshot tells the device to cache only the edits
that gained (``cache_ok``).
"""

from __future__ import annotations

import hashlib
import math

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from llm_cloud.adapter import Adapter
from llm_cloud.adapter_config import PrototypeConfig
from llm_cloud.adapter_data import TrainingSamples
from recsys import metrics, ood
from recsys.models import EditableSeqRec, HeadEdit
from recsys.runtime import EditDecoder, EditPayload, PrototypeSnapshot, prototype_plus_residual


@torch.no_grad()
def sample_codes(
    adapter: Adapter, samples: TrainingSamples, code_table, batch: int = 1024, context=None
) -> torch.Tensor:
    """Layer codes ``[S, L, dz]`` of every training sample (``context``: its user-context hits, when read)."""
    out = []
    for start in range(0, len(samples), batch):
        b = samples.batch(torch.arange(start, min(start + batch, len(samples))), code_table, context)
        out.append(adapter.layer_codes(adapter.sequence_code(b.window, b.codes, b.state, b.context)))
    return torch.cat(out)


def _ndcg(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return metrics.ndcg(metrics.target_rank(logits, target)).float()


def clipped_parts(edit: HeadEdit, c: float) -> list[torch.Tensor]:
    """Weights and biases of a full edit, clipped, as ``[dW_1 … dW_L, db_1 … db_L]``."""
    return [w.clamp(-c, c) for w in edit.dW] + [b.clamp(-c, c) for b in edit.db]


class PrototypeBank:
    """Prototypes as tensors: ``centres [K, L·dz]``, ``weights[l] [K, D, D]``, ``biases[l] [K, D]``."""

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
        self._online = None  # (bank size, leaf head tensors, Adam) of prequential refinement

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        cfg: PrototypeConfig,
        base: EditableSeqRec,
        adapter: Adapter,
        samples: TrainingSamples,
        code_table,
        seed: int = 0,
        context=None,
        calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> PrototypeBank:
        """k-means over the samples' codes, prototype heads; ``calibration`` = held-out ``(states, next
        items)`` (validation rows) to fit the OOD score on (without it the bank flags nothing)."""
        bank = cls(cfg, len(base.head.layers), adapter.cfg.code_dim, adapter.cfg.clip)
        codes = sample_codes(adapter, samples, code_table, context=context)
        flat = codes.reshape(len(codes), -1).contiguous()
        k = min(cfg.k, len(flat))
        km = faiss.Kmeans(flat.size(1), k, niter=25, seed=seed, verbose=False)
        km.train(flat.cpu().numpy().astype(np.float32))
        bank.centres = torch.from_numpy(km.centroids.copy()).to(flat.device)
        assign, _ = bank.assign_nearest(flat)
        bank.counts = torch.bincount(assign, minlength=k).float()
        sig = torch.zeros(k, samples.state.size(1), device=flat.device).index_add_(0, assign, samples.state)
        bank.signatures = sig / bank.counts.clamp(min=1).unsqueeze(1)
        bank.miss, bank.seen = torch.zeros(k, device=flat.device), torch.zeros(k, device=flat.device)
        with torch.no_grad():
            centre_edit = adapter.edits_from_codes(bank.centres.view(k, bank.n_layers, -1), base)
        parts = clipped_parts(centre_edit, adapter.cfg.clip)
        bank.weights, bank.biases = parts[: bank.n_layers], parts[bank.n_layers :]
        if cfg.variant == "finetune":
            bank._finetune_heads(base, samples, assign, seed)
        if calibration is not None:
            bank.calibrate(base, *calibration)
        return bank

    def _finetune_heads(self, base: EditableSeqRec, samples: TrainingSamples, assign: torch.Tensor, seed: int) -> None:
        """Prototype k = the base head fine-tuned (from its centre edit) on cluster k's training samples."""
        g = torch.Generator(device=samples.state.device).manual_seed(seed)
        anchors = base.head.anchors()
        for k in range(len(self.centres)):
            idx = torch.nonzero(assign == k).flatten()
            if len(idx) == 0:
                continue
            ws = [(a.detach() + self.weights[i][k]).clone().requires_grad_() for i, (a, _) in enumerate(anchors)]
            bs = [(a.detach() + self.biases[i][k]).clone().requires_grad_() for i, (_, a) in enumerate(anchors)]
            opt = torch.optim.Adam([*ws, *bs], lr=self.cfg.finetune_lr)
            for _ in range(self.cfg.finetune_epochs):
                perm = idx[torch.randperm(len(idx), generator=g, device=idx.device)]
                for start in range(0, len(perm), 512):
                    sel = perm[start : start + 512]
                    edit = HeadEdit(
                        [w - a.detach() for w, (a, _) in zip(ws, anchors)],
                        [b - a.detach() for b, (_, a) in zip(bs, anchors)],
                        clip=1e6,
                    )
                    logits = base.logits(base.head(samples.state[sel], edit))
                    target = samples.targets[sel, 0]
                    loss = F.cross_entropy(logits, target)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            for i, (a, b) in enumerate(anchors):
                self.weights[i][k] = (ws[i].detach() - a.detach()).clamp(-self.cfg.total_clip, self.cfg.total_clip)
                self.biases[i][k] = (bs[i].detach() - b.detach()).clamp(-self.cfg.total_clip, self.cfg.total_clip)

    # ------------------------------------------------------------- assignment
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

    def edit_for(self, k: torch.Tensor, sample_edit: HeadEdit | None, centre_edit: HeadEdit | None) -> HeadEdit:
        """``E_k`` (+ the sample's residual ``clip(ΔW(z)) − clip(ΔW(c_k))``, clipped) as one edit."""
        protos = [p[k] for p in self.weights + self.biases]
        if sample_edit is not None and centre_edit is not None:
            r = self.cfg.residual_clip
            mine, theirs = clipped_parts(sample_edit, self.adapter_clip), clipped_parts(centre_edit, self.adapter_clip)
            protos = prototype_plus_residual(protos, mine, theirs, r)
        return HeadEdit(protos[: self.n_layers], protos[self.n_layers :], clip=self.cfg.total_clip)

    # ------------------------------------------------------------------ OOD
    def nearest_signature(self, state: torch.Tensor) -> torch.Tensor:
        """``[B]`` the prototype whose signature is nearest each user state (what a device computes)."""
        return torch.cdist(state, self.signatures).argmin(dim=1)

    def proto_logodds(self) -> torch.Tensor:
        """``[K]`` logit of each prototype's miss rate, smoothed toward the bank-wide rate (2 rows' worth)."""
        return ood.logit((self.miss + 2.0 * self.prior) / (self.seen + 2.0))

    @torch.no_grad()
    def calibrate(self, base: EditableSeqRec, state: torch.Tensor, target: torch.Tensor) -> None:
        """Fit the OOD score on held-out rows (validation): each prototype's miss counts, the weights of
        entropy and prototype log-odds, and the threshold at ``ood_quantile`` of the rows' scores."""
        logits = base.logits(base.head(state, None))
        ent, miss, k = ood.entropy(logits), ood.missed(logits, target).float(), self.nearest_signature(state)
        self.miss = torch.zeros(self.size, device=state.device).index_add_(0, k, miss)
        self.seen = torch.zeros(self.size, device=state.device).index_add_(0, k, torch.ones_like(miss))
        self.prior = float(miss.mean())
        self.ood_weights = ood.fit_weights(ent.cpu(), self.proto_logodds()[k].cpu(), miss.cpu())
        score = self._score(ent, k)
        self.ood_threshold = float(torch.quantile(score[: min(len(score), 200_000)], self.cfg.ood_quantile))
        self.fit_cache_gain(base, state, target, logits)

    @torch.no_grad()
    def fit_cache_gain(self, base: EditableSeqRec, state: torch.Tensor, target: torch.Tensor,
                       logits: torch.Tensor | None = None, batch: int = 4096) -> None:
        """``cache_gain[k]``: mean NDCG@10 of prototype k's edit alone minus the base head's, over the held-out
        rows a device would serve from its cache with it (nearest signature, not out of distribution)."""
        k, score, logits = self.ood_scores(base, state, logits)
        use = ~self.is_ood(score)
        gain = torch.zeros(self.size, device=state.device)
        rows = torch.zeros(self.size, device=state.device)
        for p in range(self.size):
            idx = torch.nonzero((k == p) & use).flatten()
            for start in range(0, len(idx), batch):
                sel = idx[start : start + batch]
                edited = base.logits(base.head(state[sel], self.prototype_edit(p)))
                gain[p] += (_ndcg(edited, target[sel]) - _ndcg(logits[sel], target[sel])).sum()
            rows[p] = len(idx)
        self.cache_gain = gain / rows.clamp(min=1)

    def cache_ok(self) -> list[bool]:
        """Per prototype: may a device serve its edit from the cache? Only where it gained on held-out rows
        (not measured, e.g. a bank saved before the gate: every prototype, as before)."""
        if self.cache_gain is None:
            return [True] * self.size
        return (self.cache_gain > 0).tolist()

    def prototype_edit(self, k: int) -> HeadEdit:
        """Prototype ``k``'s head edit ``E_k`` (relative to the base head)."""
        return HeadEdit([w[k] for w in self.weights], [b[k] for b in self.biases], clip=self.cfg.total_clip)

    def _score(self, ent: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return ood.combine(ent, self.proto_logodds()[k], *self.ood_weights)

    @torch.no_grad()
    def ood_scores(self, base: EditableSeqRec, state: torch.Tensor, logits: torch.Tensor | None = None):
        """``(k, score, base logits)``: nearest signature and OOD score of each state (``-inf``: uncalibrated)."""
        logits = base.logits(base.head(state, None)) if logits is None else logits
        k = self.nearest_signature(state)
        if self.ood_weights is None:
            return k, torch.full((len(state),), float("-inf"), device=state.device), logits
        return k, self._score(ood.entropy(logits), k), logits

    def is_ood(self, score: torch.Tensor) -> torch.Tensor:
        return score > self.ood_threshold

    def observe(self, k: torch.Tensor, miss: torch.Tensor) -> None:
        """Dynamic banks: count the streamed rows' outcomes (did the base model miss what came next?)."""
        self.miss.index_add_(0, k, miss.float())
        self.seen.index_add_(0, k, torch.ones_like(miss, dtype=self.seen.dtype))

    # ------------------------------------------------------- dynamic updates
    def refine(self, k: int, code: torch.Tensor, sample_parts: list[torch.Tensor], state: torch.Tensor) -> None:
        """Move prototype ``k`` toward an assigned device: centre, head and signature.

        ``refine_rate`` None: running mean over everything the prototype has absorbed (its training cluster
        counts as ``counts[k]`` samples), so a burst of one device's requests cannot drag it away; a
        number: a fixed-rate moving average (recent windows dominate).
        """
        rate = self.cfg.refine_rate if self.cfg.refine_rate is not None else 1.0 / (float(self.counts[k]) + 1.0)
        with torch.no_grad():
            self._refine(k, rate, code, sample_parts, state)

    def _refine(self, k: int, rate: float, code, sample_parts, state) -> None:
        self.centres[k] += rate * (code - self.centres[k])
        self.signatures[k] += rate * (state - self.signatures[k])
        for i, part in enumerate(sample_parts):
            target = (self.weights + self.biases)[i]
            target[k] += rate * (part - target[k])
        self.counts[k] += 1

    def learn(self, base: EditableSeqRec, k: torch.Tensor, state: torch.Tensor, target: torch.Tensor) -> float | None:
        """Prequential refinement in the cloud: once a batch has been answered, the items its devices went on
        to consume train the heads of the prototypes they were assigned to (one Adam step, rate
        ``online_lr``); later requests get the refined heads. Returns the loss (None when disabled)."""
        if self.cfg.online_lr is None or len(k) == 0:
            return None
        with torch.inference_mode(False), torch.enable_grad():
            if self._online is None or self._online[0] != self.size:  # (re)start after a spawn changed the shapes
                leafs = [p.detach().clone().requires_grad_() for p in self.weights + self.biases]
                self._online = (self.size, leafs, torch.optim.Adam(leafs, lr=self.cfg.online_lr))
                self.weights, self.biases = leafs[: self.n_layers], leafs[self.n_layers :]
            _, leafs, opt = self._online
            k, state, target = k.clone(), state.clone(), target.clone()
            edit = HeadEdit([w[k] for w in leafs[: self.n_layers]], [b[k] for b in leafs[self.n_layers :]],
                            clip=self.cfg.total_clip)  # fmt: skip
            loss = F.cross_entropy(base.logits(base.head(state, edit)), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for leaf in leafs:
                    leaf.clamp_(-self.cfg.total_clip, self.cfg.total_clip)
        return float(loss)

    def absorb(self, k: torch.Tensor, ood_rows: torch.Tensor, flat: torch.Tensor, parts: list[torch.Tensor],
               state: torch.Tensor) -> None:
        """Take in answered windows (in time order): an out-of-distribution one opens a new prototype with its
        own edit ``parts`` while the bank has room (:meth:`spawn`), every other one moves its nearest
        prototype ``k`` toward it (:meth:`refine`)."""
        with torch.no_grad():
            for i in range(len(flat)):
                row = [p[i] for p in parts]
                if bool(ood_rows[i]) and self.spawn(flat[i], row, state[i]) is not None:
                    continue
                self.refine(int(k[i]), flat[i], row, state[i])

    def spawn(self, code: torch.Tensor, sample_parts: list[torch.Tensor], state: torch.Tensor) -> int | None:
        """Open a prototype at an out-of-distribution code; ``None`` when the bank is full."""
        if not self.cfg.spawn or self.size >= self.cfg.max_k:
            return None
        self.centres = torch.cat([self.centres, code.view(1, -1)])
        self.signatures = torch.cat([self.signatures, state.view(1, -1)])
        self.counts = torch.cat([self.counts, torch.ones(1, device=self.counts.device)])
        self.miss = torch.cat([self.miss, torch.zeros(1, device=self.miss.device)])  # starts at the prior
        self.seen = torch.cat([self.seen, torch.zeros(1, device=self.seen.device)])
        if self.cache_gain is not None:  # no held-out evidence for it yet: not served from a device's cache
            self.cache_gain = torch.cat([self.cache_gain, torch.zeros(1, device=self.cache_gain.device)])
        for i, part in enumerate(sample_parts):
            if i < self.n_layers:
                self.weights[i] = torch.cat([self.weights[i], part.unsqueeze(0)])
            else:
                j = i - self.n_layers
                self.biases[j] = torch.cat([self.biases[j], part.unsqueeze(0)])
        self.spawned += 1
        return self.size - 1

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

    def ood_snapshot(self) -> ood.OodScore | None:
        if self.ood_weights is None or not math.isfinite(self.ood_threshold):
            return None
        we, wp, b = self.ood_weights
        return ood.OodScore(w_entropy=we, w_proto=wp, bias=b, proto_logodds=self.proto_logodds().tolist(),
                            threshold=self.ood_threshold)

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
            ood=self.ood_snapshot(),
            cache_ok=self.cache_ok(),
            decoder=decoder,
        )
