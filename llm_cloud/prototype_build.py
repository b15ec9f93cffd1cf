"""Building a prototype bank: k-means over adapter codes, the prototype heads, the OOD score's fit, the cache gain.

:func:`build_bank` clusters the training windows' layer codes (FAISS k-means), gives every prototype the
adapter's edit of its centre, and for ``variant: finetune`` fine-tunes that edit on its cluster
(:func:`finetune_heads`, through the one training loop :func:`recsys.loop.fit`). Given held-out rows it
fits the OOD score (:func:`calibrate`: per-prototype miss counts, the weights of entropy and prototype
log-odds, the threshold at ``ood_quantile``) and measures, per prototype, what its cached edit does on its
own — the device's path when the cloud is slow or down: nearest signature, the OOD test, ``E_k`` with no
residual — against the base head on the same rows (:func:`fit_cache_gain`).
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch

from llm_cloud.adapter import Adapter
from llm_cloud.adapter_config import PrototypeConfig
from llm_cloud.adapter_data import TrainingSamples
from llm_cloud.prototypes import (
    PrototypeBank,
    PrototypeHeads,
    clipped_parts,
    is_ood,
    ood_score,
    ood_scores,
    proto_logodds,
)
from recsys import metrics, ood
from recsys.loop import LoopSettings, fit
from recsys.models import EditableSeqRec

FINETUNE_BATCH = 512  # cluster samples per Adam step of a prototype head's fine-tuning
NO_CLIP = 1e6  # the head edit is clipped to the bank's total clip after its fine-tuning, not during it


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


def build_bank(
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
    bank = PrototypeBank(cfg, len(base.head.layers), adapter.cfg.code_dim, adapter.cfg.clip)
    codes = sample_codes(adapter, samples, code_table, context=context)
    assign = _cluster(bank, codes.reshape(len(codes), -1).contiguous(), samples.state, seed)
    with torch.no_grad():
        centre_edit = adapter.edits_from_codes(bank.centres.view(bank.size, bank.n_layers, -1), base)
    parts = clipped_parts(centre_edit, adapter.cfg.clip)
    bank.weights, bank.biases = parts[: bank.n_layers], parts[bank.n_layers :]
    if cfg.variant == "finetune":
        finetune_heads(bank, base, samples, assign, seed)
    if calibration is not None:
        calibrate(bank, base, *calibration)
    return bank


def _cluster(bank: PrototypeBank, flat: torch.Tensor, state: torch.Tensor, seed: int) -> torch.Tensor:
    """Centres (k-means), counts, signatures and empty miss counts of ``bank``; each sample's cluster."""
    k = min(bank.cfg.k, len(flat))
    km = faiss.Kmeans(flat.size(1), k, niter=25, seed=seed, verbose=False)
    km.train(flat.cpu().numpy().astype(np.float32))
    bank.centres = torch.from_numpy(km.centroids.copy()).to(flat.device)
    assign, _ = bank.assign_nearest(flat)
    bank.counts = torch.bincount(assign, minlength=k).float()
    sig = torch.zeros(k, state.size(1), device=flat.device).index_add_(0, assign, state)
    bank.signatures = sig / bank.counts.clamp(min=1).unsqueeze(1)
    bank.miss, bank.seen = torch.zeros(k, device=flat.device), torch.zeros(k, device=flat.device)
    return assign


def finetune_heads(bank: PrototypeBank, base: EditableSeqRec, samples: TrainingSamples, assign: torch.Tensor,
                   seed: int) -> None:
    """Prototype k = the base head fine-tuned (from its centre edit) on cluster k's training samples:
    ``finetune_epochs`` epochs of Adam (``finetune_lr``) over shuffled batches, by :func:`recsys.loop.fit`."""
    settings = LoopSettings(epochs=bank.cfg.finetune_epochs, batch_size=FINETUNE_BATCH, grad_clip=math.inf,
                            patience=1, alone=True)  # fmt: skip
    for k in range(bank.size):
        idx = torch.nonzero(assign == k).flatten()
        if len(idx) == 0:
            continue
        heads = PrototypeHeads(base, [p[k].detach().clone() for p in bank.weights + bank.biases], NO_CLIP)
        opt = torch.optim.Adam(heads.parameters(), lr=bank.cfg.finetune_lr)

        def batch_of(rows: torch.Tensor, idx=idx) -> tuple:
            sel = idx[rows.to(idx.device)]
            return samples.state[sel], samples.targets[sel, 0]

        fit(heads, heads, batch_of, np.ones(len(idx)), None, opt, settings, seed * 1_000_003 + k,
            desc=f"prototype {k}", progress=False)  # fmt: skip
        c = bank.cfg.total_clip
        for part, tuned in zip(bank.weights + bank.biases, heads.parts):
            part[k] = tuned.detach().clamp(-c, c)


@torch.no_grad()
def calibrate(bank: PrototypeBank, base: EditableSeqRec, state: torch.Tensor, target: torch.Tensor) -> None:
    """Fit the OOD score on held-out rows (validation): each prototype's miss counts, the weights of
    entropy and prototype log-odds, and the threshold at ``ood_quantile`` of the rows' scores; then the
    cache gain on the same rows."""
    logits = base.logits(base.head(state, None))
    ent, miss, k = ood.entropy(logits), ood.missed(logits, target).float(), bank.nearest_signature(state)
    bank.miss = torch.zeros(bank.size, device=state.device).index_add_(0, k, miss)
    bank.seen = torch.zeros(bank.size, device=state.device).index_add_(0, k, torch.ones_like(miss))
    bank.prior = float(miss.mean())
    bank.ood_weights = ood.fit_weights(ent.cpu(), proto_logodds(bank)[k].cpu(), miss.cpu())
    score = ood_score(bank, ent, k)
    bank.ood_threshold = float(torch.quantile(score[: min(len(score), 200_000)], bank.cfg.ood_quantile))
    fit_cache_gain(bank, base, state, target, logits)


def _ndcg(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return metrics.ndcg(metrics.target_rank(logits, target)).float()


@torch.no_grad()
def fit_cache_gain(bank: PrototypeBank, base: EditableSeqRec, state: torch.Tensor, target: torch.Tensor,
                   logits: torch.Tensor | None = None, batch: int = 4096) -> None:
    """``bank.cache_gain[k]``: mean NDCG@10 of prototype k's edit alone minus the base head's, over the held-out
    rows a device would serve from its cache with it (nearest signature, not out of distribution)."""
    k, score, logits = ood_scores(bank, base, state, logits)
    use = ~is_ood(bank, score)
    gain = torch.zeros(bank.size, device=state.device)
    rows = torch.zeros(bank.size, device=state.device)
    for p in range(bank.size):
        idx = torch.nonzero((k == p) & use).flatten()
        for start in range(0, len(idx), batch):
            sel = idx[start : start + batch]
            edited = base.logits(base.head(state[sel], bank.prototype_edit(p)))
            gain[p] += (_ndcg(edited, target[sel]) - _ndcg(logits[sel], target[sel])).sum()
        rows[p] = len(idx)
    bank.cache_gain = gain / rows.clamp(min=1)
