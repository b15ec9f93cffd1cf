"""Seeds × models: train base models, evaluate them (and popularity) on the test split, report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from recsys import distributed, run_layout
from recsys.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from recsys.config import PersonaConfig
from recsys.datasets import prepare
from recsys.evaluate import evaluate_rows, model_score_fn, popularity_score_fn
from recsys.report import markdown_table, slice_table, write_report
from recsys.splits import SplitData, load_split
from recsys.train import train_model

log = logging.getLogger(__name__)


def load_dataset_split(cfg: PersonaConfig) -> SplitData:
    """Prepare the dataset's atomic files (if needed) and build RecBole's split."""
    directory = prepare(cfg.dataset, cfg.data)
    return load_split(cfg.dataset, directory.parent, cfg.data, cfg.eval)


def train_seeds(cfg: PersonaConfig, split: SplitData | None = None, progress: bool = True) -> list[Path]:
    """Train ``cfg.model`` once per seed; write each checkpoint to ``cfg.run_dir(seed)``.

    Under ``torchrun`` every rank trains (DDP) and rank 0 alone prepares the data first and writes the
    checkpoints; the other ranks return the same paths.
    """
    with distributed.process_group(cfg):
        split = split or distributed.rank0_first(load_dataset_split, cfg)
        paths = []
        for seed in cfg.seeds:
            result = train_model(split, cfg, seed, progress=progress and distributed.is_rank0())
            extra = {"seed": seed, **result.fit.summary, "valid": result.best_valid, "protocol": cfg.data.protocol}
            if cfg.train.time_budget_s:
                extra["time_budget_s"] = cfg.train.time_budget_s
            if distributed.world_size() > 1:
                extra["world_size"] = distributed.world_size()
            if distributed.is_rank0():
                save_checkpoint(cfg.run_dir(seed), result.model, cfg.dataset, split.item_tokens, extra)
                log.info("%s seed %d: best epoch %d, valid %s", cfg.model, seed, result.best_epoch, result.best_valid)
            paths.append(cfg.run_dir(seed))
            with distributed.collective_errors(cfg.train.dist_timeout_s):
                distributed.barrier()  # no rank runs ahead of (or exits before) rank 0's checkpoint
    return paths


def evaluate_models(cfg: PersonaConfig, models: list[str], split: SplitData | None = None) -> dict[str, list[dict]]:
    """Test-split metrics per method and seed; ``pop`` is the popularity baseline."""
    split = split or load_dataset_split(cfg)
    rows = split.eval_rows("test")
    results: dict[str, list[dict]] = {}
    for name in models:
        if name == "pop":
            metrics = evaluate_rows(popularity_score_fn(split.train_counts), rows, split.config, cfg.eval.batch_size,
                                    train_counts=split.train_counts)
            results["popularity"] = [metrics for _ in cfg.seeds]  # deterministic: same for every seed
            continue
        runs = []
        for seed in cfg.seeds:
            run_dir = cfg.model_copy(update={"model": name}).run_dir(seed)
            try:
                model, meta, _ = load_checkpoint(run_dir)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc}; run `persona train model={name}` first") from exc
            if meta.n_items != split.n_items:
                raise CheckpointError(f"{run_dir}: trained on {meta.n_items} items, dataset has {split.n_items}")
            runs.append(evaluate_rows(model_score_fn(model), rows, split.config, cfg.eval.batch_size, by_length=True,
                                      train_counts=split.train_counts))
        results[name] = runs
    return results


def _with_earlier_rows(path: Path, meta: dict, results: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """``results`` laid over an earlier report of the same setting (dataset, protocol, seeds, item view), in
    its row order: ``persona evaluate --models gru4rec`` replaces GRU4Rec's rows and keeps SASRec's."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return results
    if any(old["meta"].get(k) != meta[k] for k in ("dataset", "protocol", "seeds", "item_side")):
        return results
    return {**{m: results.get(m, r) for m, r in old["runs"].items()}, **results}


def report_base(cfg: PersonaConfig, results: dict[str, list[dict]], seconds: float) -> str:
    """Write ``reports/<dataset>/base.{json,md}`` and return the Markdown table."""
    meta = {
        "dataset": cfg.dataset,
        "protocol": cfg.data.protocol,
        "seeds": list(cfg.seeds),
        "evaluation": "RecBole full ranking over all items, test split",
        "item_side": cfg.model_params.item_side,  # which item view the device models read (docs/item_side.md)
        "seconds": round(seconds, 1),
    }
    out = run_layout.base_report_dir(cfg.reports_dir, cfg.dataset)
    results = _with_earlier_rows(out / "base.json", meta, results)
    write_report(out, "base", f"Base models on {cfg.dataset} ({cfg.data.protocol} protocol)", results, meta)
    slices = slice_table(results)
    return markdown_table(results) + (f"\n\n{slices}" if slices else "")


__all__ = ["evaluate_models", "load_dataset_split", "report_base", "train_seeds"]
