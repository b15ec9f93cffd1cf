"""Evaluate adaptation methods side by side on the test split (RecBole full ranking + sampled AUC).

Methods (``METHODS``): ``static`` base model; ``finetune`` on-device fine-tuning of the head on the
window; ``duet`` head generated outright (no anchor); ``edit`` Persona per-sample edit; ``proto``
frozen prototype bank (fine-tuned prototype heads, nearest centre); ``proto-centre`` frozen bank of
centre edits; ``proto-res`` frozen bank + per-sample residual; ``proto-dyn`` prototype + residual with
dynamic refinement and OOD spawning while the test period streams in time order; ``no-xlayer`` and
``no-codebook`` ablations of the edit; ``context`` / ``no-context`` the edit with / without the
user-context codebook hits, ``solid`` with them and the semantic path as the main edit; ``served``
what the cloud service answers (:func:`llm_cloud.editor.served_edit`: prototype + residual, the
window's own edit when out of distribution, the configured bank variant, frozen).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llm_cloud.adapter import Adapter, edited_logits
from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
from llm_cloud.adapter_data import TrainingSamples, batch_from_rows
from llm_cloud.adapter_train import adapter_score_fn, train_adapter
from llm_cloud.artifacts import (
    ArtifactError,
    code_table_for,
    freeze,
    load_adapter,
    load_bank,
    save_adapter,
    save_bank,
    user_context_for,
)
from llm_cloud.editor import served_edit
from llm_cloud.prototypes import PrototypeBank, clipped_parts
from llm_cloud.user_context import UserContextHits
from recsys import distributed
from recsys.evaluate import evaluate_rows, model_score_fn
from recsys.finetune import finetune_edit
from recsys.models import EditableSeqRec, HeadEdit, score_with_edit
from recsys.splits import SplitData

log = logging.getLogger(__name__)

METHODS = ["static", "finetune", "duet", "edit", "proto", "proto-centre", "proto-res", "proto-dyn", "served",
           "no-xlayer", "no-codebook", "context", "no-context", "solid"]
ADAPTER_OF = {  # method → adapter variant (config overrides)
    "edit": "main", "proto": "main", "proto-centre": "main", "proto-res": "main", "proto-dyn": "main",
    "served": "main", "duet": "duet", "no-xlayer": "no-xlayer", "no-codebook": "no-codebook",
    "context": "context", "no-context": "no-context", "solid": "solid",
}
EDIT_METHODS = ("edit", "duet", "no-xlayer", "no-codebook", "context", "no-context", "solid")  # per-sample edits
FINETUNE_LRS = (1e-3, 3e-3, 1e-2)  # on-device fine-tuning: 5 Adam steps, lr chosen on validation
FINETUNE_SELECT_ROWS = 3000
VARIANTS = {"main": {}, "duet": {"anchor": False}, "no-xlayer": {"cross_layer": False},
            "no-codebook": {"use_codebook": False}, "context": {"use_context": True},
            "no-context": {"use_context": False, "semantic_main": False},
            "solid": {"use_context": True, "semantic_main": True}}


BUILD_FIELDS = ("k", "variant", "finetune_epochs", "finetune_lr", "build_samples", "ood_quantile")  # a saved bank's


def _same_config(name: str, saved: dict, wanted: dict) -> None:
    diff = [k for k in wanted if saved.get(k) != wanted[k]]
    if diff:
        k = diff[0]
        raise ArtifactError(f"saved {name} was made with {k}={saved.get(k)!r}, this run asks for {wanted[k]!r}")


@dataclass
class RowRecord:
    """Per-row outcomes for plots and OOD analysis (filled in evaluation order)."""

    rank: list[torch.Tensor] = field(default_factory=list)
    auc: list[torch.Tensor] = field(default_factory=list)
    ood_distance: list[torch.Tensor] = field(default_factory=list)  # to the nearest prototype (the OOD score)
    ood_residual: list[torch.Tensor] = field(default_factory=list)  # ‖clip(ΔW(z)) − clip(ΔW(c_k))‖: edit left to do
    base_entropy: list[torch.Tensor] = field(default_factory=list)  # the static model's softmax entropy

    def cat(self, name: str) -> np.ndarray:
        parts = getattr(self, name)
        return torch.cat(parts).numpy() if parts else np.array([])


def recording(score_fn, record: RowRecord, n_neg: int = 100, seed: int = 0):
    """Wrap a score function to keep each row's target rank and sampled AUC (``n_neg`` negatives)."""
    gen = torch.Generator().manual_seed(seed)

    def fn(rows):
        scores = score_fn(rows)
        pos = rows["item_id"]
        s = scores.clone()
        s[:, 0] = float("-inf")
        ps = s.gather(1, pos.view(-1, 1))
        record.rank.append((s > ps).sum(1).cpu())
        neg = torch.randint(1, s.size(1), (len(pos), n_neg), generator=gen).to(s.device)
        neg = torch.where(neg == pos.view(-1, 1), (neg % (s.size(1) - 1)) + 1, neg)
        ns = s.gather(1, neg)
        record.auc.append(((ps > ns).float() + 0.5 * (ps == ns).float()).mean(1).cpu())
        return scores

    return fn


class Adaptation:
    """Everything one (dataset, model, seed) needs: base model, split, adapters, banks."""

    def __init__(self, base: EditableSeqRec, split: SplitData, adapter_cfg: AdapterConfig,
                 proto_cfg: PrototypeConfig, seed: int, codebook_dir: Path | None, out_dir: Path,
                 eval_batch_size: int = 256, progress: bool = True, device: str = "cpu",
                 dist_timeout_s: float = 300.0, reuse: bool = False, valid_metric: str = "ndcg@10"):
        self.device = device
        self.base, self.split, self.seed = freeze(base).to(device), split, seed
        self.adapter_cfg, self.proto_cfg = adapter_cfg, proto_cfg
        self.out_dir, self.eval_batch_size, self.progress = Path(out_dir), eval_batch_size, progress
        self.dist_timeout_s, self.valid_metric = dist_timeout_s, valid_metric
        self.reuse = reuse  # evaluate the adapters and banks already saved in out_dir instead of training them
        self.code_table = None
        if adapter_cfg.use_codebook and codebook_dir is not None:
            self.code_table = code_table_for(codebook_dir, split.item_tokens).to(device)
        self.codebook_dir = codebook_dir
        self._context: UserContextHits | None = None
        self.adapters: dict[str, tuple[Adapter, TrainingSamples]] = {}
        self.banks: dict[str, PrototypeBank] = {}
        self.timings: dict[str, float] = {}
        self.selected: dict[str, float] = {}  # hyper-parameters chosen on validation (reported)

    # ------------------------------------------------------------------ training
    def adapter(self, variant: str) -> tuple[Adapter, TrainingSamples | None]:
        if variant not in self.adapters and self.reuse:
            cfg = self.adapter_cfg.model_copy(update=VARIANTS[variant])
            adapter, _ = load_adapter(self.out_dir / f"adapter-{variant}")
            _same_config(f"adapter-{variant}", adapter.cfg.model_dump(), cfg.model_dump())
            self.adapters[variant] = (freeze(adapter).to(self.device), None)
        if variant not in self.adapters:
            cfg = self.adapter_cfg.model_copy(update=VARIANTS[variant])
            table = self.code_table if cfg.use_codebook else None
            context = self.user_context() if cfg.use_context else None
            t0 = time.perf_counter()
            res = train_adapter(self.base, self.split, cfg, self.seed, table, self.eval_batch_size,
                                self.progress and distributed.is_rank0(), self.dist_timeout_s, self.valid_metric,
                                context)
            self.timings[f"adapter:{variant}"] = time.perf_counter() - t0
            meta = {"seed": self.seed, **res.fit.summary, "valid": res.best_valid}
            if distributed.world_size() > 1:
                meta["world_size"] = distributed.world_size()
            if distributed.is_rank0():  # under torchrun every rank holds the same adapter; one writes it
                save_adapter(self.out_dir / f"adapter-{variant}", res.adapter, meta, table, context)
            self.adapters[variant] = (res.adapter, res.samples)
            log.info("adapter %s: best epoch %d valid %s", variant, res.best_epoch, res.best_valid)
        return self.adapters[variant]

    def table_for(self, adapter: Adapter):
        return self.code_table if adapter.code_sizes else None

    def user_context(self) -> UserContextHits:
        """User-context hits from the codebook artefacts (loaded once)."""
        if self._context is None:
            if self.codebook_dir is None:
                raise ArtifactError("user context needs the semantic codebook; run `persona codebook` first")
            self._context = user_context_for(self.codebook_dir, self.split.item_tokens,
                                             self.adapter_cfg.context_items).to(self.device)
        return self._context

    def context_for(self, adapter: Adapter) -> UserContextHits | None:
        if not adapter.context_sizes:
            return None
        ctx = self.user_context()
        if ctx.n_recent != adapter.cfg.context_items:
            ctx = UserContextHits(ctx.book, ctx.item_emb, adapter.cfg.context_items)
        return ctx

    def bank(self, variant: str) -> PrototypeBank:
        """``finetune`` or ``centre`` prototype bank built on the main adapter's training codes."""
        if variant not in self.banks and self.reuse:
            bank = load_bank(self.out_dir / f"bank-{variant}")
            cfg = self.proto_cfg.model_copy(update={"variant": variant})
            _same_config(f"bank-{variant}", {k: getattr(bank.cfg, k) for k in BUILD_FIELDS},
                         {k: getattr(cfg, k) for k in BUILD_FIELDS})
            bank.cfg = cfg  # how it is refined while the test period streams in is today's config
            self.banks[variant] = bank
        if variant not in self.banks:
            adapter, samples = self.adapter("main")
            cfg = self.proto_cfg.model_copy(update={"variant": variant})
            t0 = time.perf_counter()
            with torch.enable_grad():
                self.banks[variant] = PrototypeBank.build(cfg, self.base, adapter,
                                                          samples.subset(cfg.build_samples, self.seed),
                                                          self.table_for(adapter), self.seed,
                                                          self.context_for(adapter))
            self.timings[f"bank:{variant}"] = time.perf_counter() - t0
            save_bank(self.out_dir / f"bank-{variant}", self.banks[variant])
        return self.banks[variant]

    # ------------------------------------------------------------------ scoring
    def score_fn(self, method: str, record: RowRecord):
        base = self.base
        if method == "static":
            return model_score_fn(base)
        if method == "finetune":
            return self._finetune_fn(self.finetune_lr())
        adapter, _ = self.adapter(ADAPTER_OF[method])
        if method == "served":
            return self._served_fn(adapter, self.bank(self.proto_cfg.variant))
        if method in EDIT_METHODS:
            return adapter_score_fn(base, adapter, adapter.cfg.window, self.table_for(adapter),
                                    self.context_for(adapter))
        frozen = method != "proto-dyn"
        bank = self.bank("centre" if method == "proto-centre" else "finetune")
        bank = bank if frozen else bank.copy()
        residual = method in ("proto-res", "proto-dyn")
        return self._proto_fn(adapter, bank, residual=residual, dynamic=not frozen, record=record)

    def _finetune_fn(self, lr: float):
        base, window = self.base, self.adapter_cfg.window

        def fn(rows):
            edit = finetune_edit(base, rows["item_id_list"], rows["item_length"], window, lr=lr)
            return score_with_edit(base, rows["item_id_list"], rows["item_length"], edit)

        return fn

    def finetune_lr(self) -> float:
        """The on-device fine-tuning baseline's learning rate, chosen on (a time-ordered slice of) validation."""
        if "finetune" not in self.selected:
            rows = self.split.eval_rows("valid")
            rows = rows[: min(len(rows), FINETUNE_SELECT_ROWS)]
            t0 = time.perf_counter()
            scores = {
                lr: evaluate_rows(self._finetune_fn(lr), rows, self.split.config, 128, self.device)["ndcg@10"]
                for lr in FINETUNE_LRS
            }
            self.selected["finetune"] = max(scores, key=scores.get)
            self.timings["select:finetune"] = time.perf_counter() - t0
            log.info("finetune lr on validation: %s → %s", scores, self.selected["finetune"])
        return self.selected["finetune"]

    def _served_fn(self, adapter: Adapter, bank: PrototypeBank):
        base, table, context = self.base, self.table_for(adapter), self.context_for(adapter)

        def fn(rows):
            out = served_edit(base, adapter, bank, table, rows["item_id_list"], rows["item_length"], context)
            return edited_logits(base, out.state, out.edit)

        return fn

    def _proto_fn(self, adapter: Adapter, bank: PrototypeBank, residual: bool, dynamic: bool, record: RowRecord):
        base, table, context = self.base, self.table_for(adapter), self.context_for(adapter)

        def fn(rows):
            b = batch_from_rows(base, rows, adapter.cfg.window, table, context)
            codes = adapter.layer_codes(adapter.sequence_code(b.window, b.codes, b.state, b.context))
            flat = codes.flatten(1)
            if bank.cfg.assignment == "min-residual":
                k = bank.assign_min_residual(adapter.edits_from_codes(codes, base))
                dist = (flat - bank.centres[k]).norm(dim=1)
            else:
                k, dist = bank.assign_nearest(flat)
            sample_edit = adapter.edits_from_codes(codes, base)
            centre_edit = adapter.edits_from_codes(bank.centres[k].view_as(codes), base)
            left = [m - t for m, t in zip(clipped_parts(sample_edit, adapter.cfg.clip),
                                          clipped_parts(centre_edit, adapter.cfg.clip))]  # fmt: skip
            logp = torch.log_softmax(edited_logits(base, b.state, None)[:, 1:], dim=-1)
            record.ood_distance.append(dist.cpu())
            record.ood_residual.append(torch.stack([(x.flatten(1) ** 2).sum(1) for x in left]).sum(0).sqrt().cpu())
            record.base_entropy.append(-(logp.exp() * logp).sum(1).cpu())
            edit = bank.edit_for(k, sample_edit, centre_edit) if residual else bank.edit_for(k, None, None)
            if dynamic:
                ood = dist > bank.ood_threshold
                mine = clipped_parts(sample_edit, adapter.cfg.clip)
                parts = [torch.where(ood.view(-1, *[1] * (p.dim() - 1)), m, p)
                         for p, m in zip(edit.dW + edit.db, mine)]
                edit = HeadEdit(parts[: bank.n_layers], parts[bank.n_layers:], clip=edit.clip)
                logits = edited_logits(base, b.state, edit)  # the answer, before anything is learnt from it
                self._stream_update(bank, k, ood, flat, parts, b.state)
                known = ~ood  # prequential: the items these devices consumed next refine their prototypes
                bank.learn(base, k[known], b.state[known], rows["item_id"][known])
                return logits
            return edited_logits(base, b.state, edit)

        return fn

    @staticmethod
    def _stream_update(bank: PrototypeBank, k, ood, flat, parts, state) -> None:
        """After answering a batch (in time order), refine assigned prototypes and open new ones."""
        for i in range(len(k)):
            row_parts = [p[i] for p in parts]
            if bool(ood[i]) and bank.spawn(flat[i], row_parts, state[i]) is not None:
                continue
            bank.refine(int(k[i]), flat[i], row_parts, state[i])

    def evaluate(self, method: str) -> tuple[dict[str, float], RowRecord]:
        record = RowRecord()
        fn = recording(self.score_fn(method, record), record, seed=self.seed)
        batch = self.eval_batch_size if method != "finetune" else min(self.eval_batch_size, 128)
        t0 = time.perf_counter()
        metrics = evaluate_rows(fn, self.split.eval_rows("test"), self.split.config, batch, self.device)
        self.timings[f"eval:{method}"] = time.perf_counter() - t0
        aucs = record.cat("auc")
        users = self.split.eval_rows("test")["user_id"].numpy()
        per_user = np.bincount(users, weights=aucs) / np.maximum(np.bincount(users), 1)
        metrics["auc"] = float(aucs.mean())
        metrics["uauc"] = float(per_user[np.bincount(users) > 0].mean())
        return metrics, record
