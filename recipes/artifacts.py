"""Adapters and prototype banks of one seed: trained on demand (then saved and noted in the run's
manifest) or, with ``reuse``, reloaded from the run dir after checking they were made with this config."""

from __future__ import annotations

import logging
import time

import torch

from llm_cloud.adapter import Adapter
from llm_cloud.adapter_data import TrainingSamples, row_states
from llm_cloud.adapter_train import train_adapter
from llm_cloud.artifacts import ArtifactError, freeze, load_adapter, load_bank, save_adapter, save_bank
from llm_cloud.methods import VARIANTS, SeedInputs
from llm_cloud.prototype_build import build_bank, fit_cache_gain
from llm_cloud.prototypes import PrototypeBank
from recipes.config import RecipeConfig
from recsys import distributed, run_layout
from recsys.checkpoint import load_checkpoint

log = logging.getLogger(__name__)
BUILD_FIELDS = ("k", "variant", "finetune_epochs", "finetune_lr", "build_samples", "ood_quantile")  # a saved bank's


def _same_config(name: str, saved: dict, wanted: dict) -> None:
    diff = [k for k in wanted if saved.get(k) != wanted[k]]
    if diff:
        k = diff[0]
        raise ArtifactError(f"saved {name} was made with {k}={saved.get(k)!r}, this run asks for {wanted[k]!r}")


def seed_inputs(cfg: RecipeConfig, seed: int, split) -> SeedInputs:
    """The trained base of ``seed`` and the codebook inputs (semantic codes, user-context hits) adapters read."""
    base, _, _ = load_checkpoint(cfg.run_dir(seed))
    return SeedInputs(base, split, seed, run_layout.codebook_dir(cfg.output_dir, cfg.dataset),
                      cfg.adapter.use_codebook, cfg.adapter.context_items, distributed.rank_device(cfg))


class ArtifactBuilder:
    """The :class:`~llm_cloud.methods.ArtifactSource` of one seed: each adapter / bank built once."""

    def __init__(self, cfg: RecipeConfig, inputs: SeedInputs, reuse: bool = False, progress: bool = True):
        self.cfg, self.inputs, self.reuse, self.progress = cfg, inputs, reuse, progress
        self.run = cfg.run_dir(inputs.seed)
        self.adapters: dict[str, tuple[Adapter, TrainingSamples | None]] = {}
        self.banks: dict[str, PrototypeBank] = {}
        self._valid_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # the OOD fit's rows, computed once
        self.timings: dict[str, float] = {}

    def adapter(self, variant: str) -> Adapter:
        return self._adapter(variant)[0]

    def _adapter(self, variant: str) -> tuple[Adapter, TrainingSamples | None]:
        if variant in self.adapters:
            return self.adapters[variant]
        cfg, inputs = self.cfg.adapter.model_copy(update=VARIANTS[variant]), self.inputs
        directory = run_layout.adapter_dir(self.run, variant)
        if self.reuse:
            adapter, _ = load_adapter(directory)
            _same_config(directory.name, adapter.cfg.model_dump(), cfg.model_dump())
            self.adapters[variant] = (freeze(adapter).to(inputs.device), None)
            return self.adapters[variant]
        table = inputs.code_table if cfg.use_codebook else None
        context = inputs.user_context() if cfg.use_context else None
        t0 = time.perf_counter()
        res = train_adapter(inputs.base, inputs.split, cfg, inputs.seed, table, self.cfg.eval.batch_size,
                            self.progress and distributed.is_rank0(), self.cfg.train.dist_timeout_s,
                            self.cfg.eval.valid_metric, context)
        self.timings[f"adapter:{variant}"] = time.perf_counter() - t0
        meta = {"seed": inputs.seed, **res.fit.summary, "valid": res.best_valid}
        if distributed.world_size() > 1:
            meta["world_size"] = distributed.world_size()
        if distributed.is_rank0():  # under torchrun every rank holds the same adapter; one writes it
            save_adapter(directory, res.adapter, meta, table, context)
            run_layout.record(self.run, "adapter", variant, cfg.model_dump())
        self.adapters[variant] = (res.adapter, res.samples)
        log.info("adapter %s: best epoch %d valid %s", variant, res.best_epoch, res.best_valid)
        return self.adapters[variant]

    def _calibration(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation rows' base states and next items: the OOD score is fitted on them (never on test);
        computed once per seed, shared by every bank variant."""
        if self._valid_rows is None:
            base = self.inputs.base
            state, target = row_states(base, self.inputs.split.eval_rows("valid"))
            self._valid_rows = state.to(base.item_embeddings.device), target.to(base.item_embeddings.device)
        return self._valid_rows

    def bank(self, variant: str) -> PrototypeBank:
        """``finetune`` or ``centre`` prototype bank built on the main adapter's training codes."""
        if variant in self.banks:
            return self.banks[variant]
        cfg, inputs = self.cfg.prototypes.model_copy(update={"variant": variant}), self.inputs
        directory = run_layout.bank_dir(self.run, variant)
        if self.reuse:
            bank = load_bank(directory)
            _same_config(directory.name, {k: getattr(bank.cfg, k) for k in BUILD_FIELDS},
                         {k: getattr(cfg, k) for k in BUILD_FIELDS})
            bank.cfg = cfg  # how it is refined while the test period streams in is today's config
            if bank.cache_gain is None and bank.ood_weights is not None:  # saved before the device-cache gate
                fit_cache_gain(bank, inputs.base, *self._calibration())  # measured on validation, as a build does
                save_bank(directory, bank)
            self.banks[variant] = bank
            return bank
        adapter, samples = self._adapter(run_layout.MAIN_ADAPTER)
        t0 = time.perf_counter()
        with torch.enable_grad():
            self.banks[variant] = build_bank(cfg, inputs.base, adapter, samples.subset(cfg.build_samples, inputs.seed),
                                             inputs.table_for(adapter), inputs.seed, inputs.context_for(adapter),
                                             self._calibration())
        self.timings[f"bank:{variant}"] = time.perf_counter() - t0
        save_bank(directory, self.banks[variant])
        run_layout.record(self.run, "bank", variant, cfg.model_dump())
        return self.banks[variant]
