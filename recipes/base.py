"""Base-model recipes: ``prepare`` the data, ``train`` the device model per seed, ``evaluate`` it (+ popularity)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from recsys import distributed, run_layout
from recsys.config import PersonaConfig
from recsys.datasets import prepare as prepare_dataset
from recsys.experiment import evaluate_models, load_dataset_split, report_base, train_seeds
from recsys.models import get_spec
from recsys.splits import SplitData


@dataclass
class BaseReport:
    """Test-split metrics per method and seed, the Markdown table, and the report it wrote."""

    results: dict[str, list[dict]]
    table: str
    report: Path  # reports/<dataset>/base (.json / .md)
    seconds: float = 0.0
    checkpoints: list[Path] = field(default_factory=list)  # the main job's trained run dirs


def check_models(names: list[str], popularity: bool = False) -> list[str]:
    """``names`` when each is a registered model (``popularity``: or ``pop``, the popularity baseline); else
    :class:`recsys.models.UnknownModelError` (:func:`recsys.models.get_spec`) naming the first unknown one."""
    for name in names:
        if not (popularity and name == "pop"):
            get_spec(name)
    return names


def prepare(cfg: PersonaConfig, force: bool = False) -> Path:
    """Convert ``cfg.dataset`` to RecBole atomic files (once; again with ``force``); their directory."""
    return prepare_dataset(cfg.dataset, cfg.data, force=force)


def checkpoint_config(cfg: PersonaConfig) -> dict:
    """The config sections a base checkpoint depends on (its manifest digest)."""
    return cfg.model_dump(mode="json", include={"dataset", "model", "data", "model_params", "train", "eval"})


def train(cfg: PersonaConfig, split: SplitData | None = None, progress: bool = True) -> list[Path]:
    """Train ``cfg.model`` for every seed (DDP under torchrun); the run dirs, each noted in its manifest."""
    paths = train_seeds(cfg, split, progress)
    if distributed.env_rank() == 0:
        for path in paths:
            run_layout.record(path, "checkpoint", config=checkpoint_config(cfg))
    return paths


def evaluate(cfg: PersonaConfig, models: list[str], split: SplitData | None = None,
             since: float | None = None) -> BaseReport:
    """Test metrics of trained ``models`` (``pop``: popularity; each checked by :func:`check_models` first) for
    every seed; writes reports/<dataset>/base.

    ``since``: the ``time.perf_counter()`` the reported seconds count from (default: now).
    """
    check_models(models, popularity=True)
    t0 = time.perf_counter() if since is None else since
    results = evaluate_models(cfg, models, split)
    seconds = time.perf_counter() - t0
    table = report_base(cfg, results, seconds)
    return BaseReport(results, table, run_layout.base_report_dir(cfg.reports_dir, cfg.dataset) / "base", seconds)


def train_and_evaluate(model_cfgs: list[PersonaConfig], progress: bool = True) -> BaseReport:
    """Prepare, train each model (its own layered config) for every seed, evaluate them and popularity.

    The configs differ only in ``model``; the first one's dataset, seeds and reports dir are used.
    """
    t0 = time.perf_counter()
    cfg = model_cfgs[0]
    split = load_dataset_split(cfg)
    paths = [p for c in model_cfgs for p in train(c, split, progress)]
    out = evaluate(cfg, ["pop", *(c.model for c in model_cfgs)], split, since=t0)
    out.checkpoints = paths
    return out
