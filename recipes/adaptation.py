"""Adaptation recipes: ``adapter`` (the serving adapter + prototype bank per seed) and ``evaluate_methods``
(every adaptation method × seed on the test split, reported under ``reports/<dataset>/adaptation-<model>``)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from llm_cloud.adaptation_report import (
    OOD_METHODS,
    merge_with_report,
    ndcg_over_time,
    ood_aurocs,
    report_adaptation,
    time_windows,
)
from llm_cloud.methods import METHODS, MethodEvaluator, RowRecord
from recipes.artifacts import ArtifactBuilder, seed_inputs
from recipes.config import RecipeConfig
from recsys import distributed, run_layout
from recsys.experiment import load_dataset_split

log = logging.getLogger(__name__)


@dataclass
class ServingArtifacts:
    """What ``adapter`` wrote for one seed (rank 0)."""

    seed: int
    run_dir: Path
    adapter_dir: Path
    bank_dir: Path
    prototypes: Path  # the bank's snapshot
    size: int  # prototypes in the bank


def adapter(cfg: RecipeConfig, progress: bool = True) -> list[ServingArtifacts]:
    """Train the main adapter (DDP under torchrun; rank 0 writes it) and build the ``prototypes.variant``
    bank (rank 0 alone: a cheap k-means + per-cluster fine-tuning) for every seed. Rank 0 gets the list."""
    out = []
    with distributed.process_group(cfg):
        split = distributed.rank0_first(load_dataset_split, cfg)
        for seed in cfg.seeds:
            build = ArtifactBuilder(cfg, seed_inputs(cfg, seed, split), progress=progress)
            build.adapter(run_layout.MAIN_ADAPTER)
            if distributed.is_rank0():
                variant = cfg.prototypes.variant
                bank = build.bank(variant)
                path = run_layout.prototypes_file(build.run)
                bank.snapshot().save(path)
                run_layout.record(build.run, "prototypes", variant, cfg.prototypes.model_dump())
                out.append(ServingArtifacts(seed, build.run, run_layout.adapter_dir(build.run),
                                            run_layout.bank_dir(build.run, variant), path, bank.size))
            with distributed.collective_errors(cfg.train.dist_timeout_s):
                distributed.barrier()
    return out


@dataclass
class MethodsReport:
    out: dict  # results, over_time, ood_auroc, timings, window_edges (see llm_cloud.adaptation_report)
    table: str  # Markdown, as in reports/<dataset>/adaptation-<model>.md


class UnknownMethodError(ValueError):
    """A method name that is not one of :data:`llm_cloud.methods.METHODS`."""


def check_methods(methods: list[str]) -> list[str]:
    """``methods`` when every one is known (``["all"]``: every method, in their order); else
    :class:`UnknownMethodError` naming the first unknown one. The one place method names are checked."""
    if list(methods) == ["all"]:
        return list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UnknownMethodError(f"unknown method '{unknown[0]}' (known: {', '.join(METHODS)})")
    return list(methods)


def run_methods(cfg: RecipeConfig, methods: list[str], progress: bool = True, reuse: bool = False) -> dict:
    """Evaluate ``methods`` (:func:`check_methods`, first) for every seed; per-method runs, time-window NDCG,
    OOD AUROC and timings.

    ``reuse``: evaluate the adapters and banks saved by an earlier run (same config) instead of training.
    """
    methods = check_methods(methods)
    split = load_dataset_split(cfg)
    window_of, edges = time_windows(split.eval_rows("test"))
    results: dict[str, list[dict]] = {m: [] for m in methods}
    over_time: dict[str, list[list[float]]] = {m: [] for m in methods}
    ood: dict[str, list[float]] = {}
    timings: list[dict] = []
    for seed in cfg.seeds:
        t0 = time.perf_counter()
        inputs = seed_inputs(cfg, seed, split)
        build = ArtifactBuilder(cfg, inputs, reuse, progress)
        evaluator = MethodEvaluator(inputs, build, cfg.adapter.window, cfg.prototypes.variant, cfg.eval.batch_size)
        records: dict[str, RowRecord] = {}
        for method in methods:
            metrics, record = evaluator.evaluate(method)
            results[method].append(metrics)
            records[method] = record
            over_time[method].append(ndcg_over_time(record, window_of))
            log.info("seed %d %-12s ndcg@10 %.4f", seed, method, metrics["ndcg@10"])
        if "static" not in records and any(m in OOD_METHODS for m in records):  # the misses OOD flags
            records["static"] = evaluator.evaluate("static")[1]
        for name, value in ood_aurocs(records).items():
            ood.setdefault(name, []).append(value)
        spent = {**build.timings, **evaluator.timings}
        timings.append({"seed": seed, "seconds": round(time.perf_counter() - t0, 1),
                        **{k: round(v, 1) for k, v in spent.items()}, "selected": dict(evaluator.selected)})
    return {"results": results, "over_time": over_time, "ood_auroc": ood, "timings": timings, "window_edges": edges}


def evaluate_methods(cfg: RecipeConfig, methods: list[str], progress: bool = True,
                     update: bool = False, reuse: bool = False) -> MethodsReport:
    """:func:`run_methods`, reported; ``update`` re-evaluates the saved adapters/banks and replaces these
    methods in the earlier report (the others are kept); ``reuse`` re-evaluates them into a new report."""
    out = run_methods(cfg, methods, progress, reuse=update or reuse)
    if update:
        out = merge_with_report(cfg, out)
    return MethodsReport(out, report_adaptation(cfg, out))
