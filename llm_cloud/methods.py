"""Evaluate adaptation methods side by side on the test split (RecBole full ranking + sampled AUC).

Methods (``METHODS``): ``static`` base model; ``finetune`` on-device fine-tuning of the head on the
window; ``duet`` head generated outright (no anchor); ``edit`` Persona per-sample edit; ``proto``
frozen prototype bank (fine-tuned prototype heads, nearest centre); ``proto-centre`` frozen bank of
centre edits; ``proto-res`` frozen bank + per-sample residual; ``proto-dyn`` prototype + residual with
dynamic refinement and OOD spawning while the test period streams in time order; ``no-xlayer`` and
``no-codebook`` ablations of the edit; ``context`` / ``no-context`` the edit with / without the
user-context codebook hits, ``solid`` with them and the semantic path as the main edit; ``served``
what the cloud service answers (:func:`llm_cloud.editor.served_edit`: prototype + residual, the
window's own edit when out of distribution, the configured bank variant, frozen); ``served-dyn`` the same
with the bank learning from the test period as it streams in time order — answered windows refine their
prototypes or open new ones, consumed items count into the OOD score (:func:`llm_cloud.editor.absorb`,
:func:`~llm_cloud.editor.count_outcomes`) — as the service runs it with ``serve.cloud.dynamic_bank=true``;
``cached`` what a device serves from its cached bank alone (cloud slow or down): its nearest signature's
edit where the snapshot's ``cache_ok`` allows it and the device is not out of distribution, else the base
head (no adapter, no cloud call).

:class:`MethodEvaluator` scores them; the adapters and banks come from an :class:`ArtifactSource`
(``recipes.artifacts.ArtifactBuilder`` trains, saves or reloads them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from llm_cloud.adapter import Adapter, edited_logits
from llm_cloud.adapter_train import adapter_score_fn
from llm_cloud.artifacts import ArtifactError, code_table_for, freeze, user_context_for
from llm_cloud.context_hits import UserContextHits
from llm_cloud.editor import absorb, count_outcomes, served_edit
from llm_cloud.prototype_online import learn
from llm_cloud.prototypes import PrototypeBank
from recsys import ood
from recsys.evaluate import evaluate_rows, model_score_fn
from recsys.finetune import finetune_edit
from recsys.models import EditableSeqRec, score_with_edit
from recsys.runtime import DeviceRuntime
from recsys.splits import SplitData

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class MethodSpec:
    """One method of the evaluation: the adapter variant it reads (None: none) and whether it serves the
    adapter's per-sample edit itself (no prototype bank)."""

    adapter: str | None = None
    per_sample: bool = False


# the one table of methods, in report order; METHODS, ADAPTER_OF and EDIT_METHODS are read from it
METHOD_TABLE: dict[str, MethodSpec] = {
    "static": MethodSpec(), "finetune": MethodSpec(), "duet": MethodSpec("duet", per_sample=True),
    "edit": MethodSpec("main", per_sample=True), "proto": MethodSpec("main"), "proto-centre": MethodSpec("main"),
    "proto-res": MethodSpec("main"), "proto-dyn": MethodSpec("main"), "served": MethodSpec("main"),
    "served-dyn": MethodSpec("main"), "cached": MethodSpec(),
    "no-xlayer": MethodSpec("no-xlayer", per_sample=True), "no-codebook": MethodSpec("no-codebook", per_sample=True),
    "context": MethodSpec("context", per_sample=True), "no-context": MethodSpec("no-context", per_sample=True),
    "solid": MethodSpec("solid", per_sample=True),
}  # fmt: skip
METHODS = list(METHOD_TABLE)
ADAPTER_OF = {name: spec.adapter for name, spec in METHOD_TABLE.items() if spec.adapter}  # method → adapter variant
EDIT_METHODS = tuple(name for name, spec in METHOD_TABLE.items() if spec.per_sample)  # per-sample edits
FINETUNE_LRS = (1e-3, 3e-3, 1e-2)  # on-device fine-tuning: 5 Adam steps, lr chosen on validation
FINETUNE_SELECT_ROWS = 3000
VARIANTS = {"main": {}, "duet": {"anchor": False}, "no-xlayer": {"cross_layer": False},
            "no-codebook": {"use_codebook": False}, "context": {"use_context": True},
            "no-context": {"use_context": False, "semantic_main": False},
            "solid": {"use_context": True, "semantic_main": True}}


@dataclass
class RowRecord:
    """Per-row outcomes for plots and OOD analysis (filled in evaluation order)."""

    rank: list[torch.Tensor] = field(default_factory=list)
    auc: list[torch.Tensor] = field(default_factory=list)
    ood_score: list[torch.Tensor] = field(default_factory=list)  # the bank's OOD score (recsys.ood), as served
    proto_distance: list[torch.Tensor] = field(default_factory=list)  # to the nearest centre (proto*: the assigned one)
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


class ArtifactSource(Protocol):
    """Where the evaluator gets a seed's adapters and banks (trained, cached or loaded: ``recipes``)."""

    def adapter(self, variant: str) -> Adapter: ...

    def bank(self, variant: str) -> PrototypeBank: ...


class SeedInputs:
    """One (dataset, model, seed): the frozen base model, the split, and the codebook inputs adapters read."""

    def __init__(self, base: EditableSeqRec, split: SplitData, seed: int, codebook_dir: Path | None,
                 use_codebook: bool = True, context_items: int = 5, device: str = "cpu"):
        self.base, self.split, self.seed, self.device = freeze(base).to(device), split, seed, device
        self.codebook_dir, self.context_items = codebook_dir, context_items
        self.code_table = None
        if use_codebook and codebook_dir is not None:
            self.code_table = code_table_for(codebook_dir, split.item_tokens).to(device)
        self._context: UserContextHits | None = None

    def table_for(self, adapter: Adapter):
        return self.code_table if adapter.code_sizes else None

    def user_context(self) -> UserContextHits:
        """User-context hits from the codebook artifacts (loaded once)."""
        if self._context is None:
            if self.codebook_dir is None:
                raise ArtifactError("user context needs the semantic codebook; run `persona codebook` first")
            self._context = user_context_for(self.codebook_dir, self.split.item_tokens,
                                             self.context_items).to(self.device)
        return self._context

    def context_for(self, adapter: Adapter) -> UserContextHits | None:
        if not adapter.context_sizes:
            return None
        ctx = self.user_context()
        if ctx.n_recent != adapter.cfg.context_items:
            ctx = UserContextHits(ctx.book, ctx.item_emb, adapter.cfg.context_items)
        return ctx


class MethodEvaluator:
    """Scores the adaptation methods of one seed on the test split (RecBole full ranking + sampled AUC)."""

    def __init__(self, inputs: SeedInputs, source: ArtifactSource, window: int, served_bank: str,
                 eval_batch_size: int = 256):
        self.inputs, self.source = inputs, source
        self.base, self.split, self.seed, self.device = inputs.base, inputs.split, inputs.seed, inputs.device
        self.window, self.served_bank, self.eval_batch_size = window, served_bank, eval_batch_size
        self.timings: dict[str, float] = {}
        self.selected: dict[str, float] = {}  # hyper-parameters chosen on validation (reported)

    # ------------------------------------------------------------------ scoring
    def score_fn(self, method: str, record: RowRecord):
        base = self.base
        if method == "static":
            return model_score_fn(base)
        if method == "finetune":
            return self._finetune_fn(self.finetune_lr())
        if method == "cached":
            return self._cached_fn(self.source.bank(self.served_bank))  # no OOD record: not an OOD_METHOD
        adapter = self.source.adapter(ADAPTER_OF[method])
        if method in ("served", "served-dyn"):  # served-dyn: a live copy, published after every batch
            bank = self.source.bank(self.served_bank)
            dynamic = method == "served-dyn"
            return self._served_fn(adapter, bank.copy() if dynamic else bank, dynamic, record)
        if method in EDIT_METHODS:
            return adapter_score_fn(base, adapter, adapter.cfg.window, self.inputs.table_for(adapter),
                                    self.inputs.context_for(adapter))
        # proto*: E_k alone or + the residual; only proto-dyn learns from the stream and gives OOD windows their
        # own edit; the distance recorded is to the assigned prototype
        dynamic = method == "proto-dyn"
        bank = self.source.bank("centre" if method == "proto-centre" else "finetune")
        return self._served_fn(adapter, bank.copy() if dynamic else bank, dynamic, record, learns=dynamic,
                               residual=method in ("proto-res", "proto-dyn"), ood_override=dynamic,
                               distance="assigned")  # fmt: skip

    def _finetune_fn(self, lr: float):
        base, window = self.base, self.window

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

    def _served_fn(self, adapter: Adapter, bank: PrototypeBank, dynamic: bool, record: RowRecord,
                   learns: bool = False, **options):
        """Rank with :func:`served_edit` of ``bank`` (``options``: its ``residual`` / ``ood_override`` /
        ``distance``), recording each row's OOD score, prototype distance and base entropy. ``dynamic``: after
        answering, the bank learns what the cloud's live bank learns (``serve.cloud.dynamic_bank``); ``learns``:
        also the prequential head steps (``prototypes.online_lr``) on the rows it served a prototype."""
        base, table, context = self.base, self.inputs.table_for(adapter), self.inputs.context_for(adapter)

        def fn(rows):
            out = served_edit(base, adapter, bank, table, rows["item_id_list"], rows["item_length"], context,
                              **options)  # fmt: skip
            record.ood_score.append(out.ood_score.cpu())
            record.proto_distance.append(out.distance.cpu())
            record.base_entropy.append(ood.entropy(out.base_logits).cpu())
            logits = edited_logits(base, out.state, out.edit)  # the answer, before its outcome is counted
            if dynamic:  # prequential: the items these devices consumed next, after the batch was answered
                count_outcomes(base, bank, out.state, rows["item_id"], out.base_logits)
                absorb(bank, out)
            if dynamic and learns:
                known = out.prototype >= 0
                learn(bank, base, out.assigned[known], out.state[known], rows["item_id"][known])
            return logits

        return fn

    def _cached_fn(self, bank: PrototypeBank):
        """The device alone with the bank's snapshot: ``DeviceRuntime``'s own assignment, OOD test and cache
        gate (what ``serving.device_app`` serves as ``prototype-cache`` / ``base`` without a cloud edit)."""
        base = self.base
        device = DeviceRuntime(base, np.arange(base.n_items).astype(str))
        device.set_prototypes(bank.snapshot())

        def fn(rows):
            state = base.user_state(rows["item_id_list"], rows["item_length"])
            protos, _ = device.assign_batch(state)
            far = device.ood_flags(state, protos)
            edits = [None if f else device.prototype_edit(k) for k, f in zip(protos, far)]
            return base.logits(device.head_batch(state, edits))

        return fn

    def evaluate(self, method: str) -> tuple[dict[str, float], RowRecord]:
        record = RowRecord()
        fn = recording(self.score_fn(method, record), record, seed=self.seed)
        batch = self.eval_batch_size if method != "finetune" else min(self.eval_batch_size, 128)
        t0 = time.perf_counter()
        metrics = evaluate_rows(fn, self.split.eval_rows("test"), self.split.config, batch, self.device,
                                train_counts=self.split.train_counts)  # + the new / seen / long-tail slices
        self.timings[f"eval:{method}"] = time.perf_counter() - t0
        aucs = record.cat("auc")
        users = self.split.eval_rows("test")["user_id"].numpy()
        per_user = np.bincount(users, weights=aucs) / np.maximum(np.bincount(users), 1)
        metrics["auc"] = float(aucs.mean())
        metrics["uauc"] = float(per_user[np.bincount(users) > 0].mean())
        return metrics, record
