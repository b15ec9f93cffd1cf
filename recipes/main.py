"""``main_job`` (``persona run``): codebook, train + evaluate the base models, the serving adapter + bank."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recipes import adaptation, base
from recipes.adaptation import ServingArtifacts
from recipes.base import BaseReport
from recipes.codebook import CodebookResult, codebook, has_codebook
from recipes.config import RecipeConfig, with_overrides
from recipes.item_delta import fit_served_item_delta
from recsys import distributed
from recsys.experiment import load_dataset_split

# the main job trains the serving adapter on a sample of training windows to stay inside `make run`'s budget
MAIN_JOB_ADAPTER = ["adapter.samples_per_epoch=10000", "adapter.epochs=3"]

Relaunch = Callable[[str, list[str]], None]
"""Run ``persona <command>`` with these extra overrides as ``train.nproc`` DDP ranks; raise :class:`LaunchError`
when they fail (the CLI supplies it: relaunching is a command-line matter)."""


class LaunchError(RuntimeError):
    """A relaunched multi-process step failed; ``code`` is its exit code."""

    def __init__(self, command: str, code: int):
        super().__init__(f"{command}: exit code {code}")
        self.command, self.code = command, code


@dataclass
class MainJobResult:
    base: BaseReport
    codebook: CodebookResult | None = None  # when this run built it
    serving: list[ServingArtifacts] = field(default_factory=list)  # the first seed's adapter + bank
    item_delta: Path | None = None  # the served checkpoint's item rows (None: no other checkpoint to teach it)


def serving_config(model_cfg: RecipeConfig, seed: int) -> list[str]:
    """The overrides of the main job's adapter step: the first model, the first seed, the sampled adapter."""
    return [f"model={model_cfg.model}", f"seeds=[{seed}]", *MAIN_JOB_ADAPTER]


def main_job(cfg: RecipeConfig, model_cfgs: list[RecipeConfig], skip_adapter: bool = False,
             progress: bool = True, relaunch: Relaunch | None = None) -> MainJobResult:
    """The codebook (when a model reads the item side file it writes, or the adapter needs it), every base
    model trained for every seed and evaluated with popularity, then the first model's adapter + bank for
    the first seed (the demo services' artifacts) and the served checkpoint's item delta. With
    ``train.nproc > 1`` training runs through ``relaunch``.
    """
    built = None
    needs_side = any(c.model_params.item_side != "none" for c in model_cfgs) and not cfg.item_side_path().is_file()
    if needs_side or (not skip_adapter and not has_codebook(cfg)):
        built = codebook(cfg)
    names = [c.model for c in model_cfgs]
    ddp = cfg.train.nproc > 1
    if ddp and relaunch is None:
        raise ValueError("train.nproc > 1 needs a relaunch function")
    if ddp:  # each model trains as train.nproc DDP ranks, then evaluation runs here
        t0 = time.perf_counter()
        load_dataset_split(cfg)  # prepare the data once, before the ranks start
        for name in names:
            relaunch("train", [f"model={name}"])
        report = base.evaluate(cfg, ["pop", *names], since=t0)
    else:
        report = base.train_and_evaluate(model_cfgs, progress)
    result = MainJobResult(report, built)
    if skip_adapter:
        return result
    first = serving_config(model_cfgs[0], cfg.seeds[0])
    serve_cfg = with_overrides(model_cfgs[0], first)
    if serve_cfg.train.nproc > 1 and not distributed.launched_by_torchrun():
        if relaunch is None:
            raise ValueError("train.nproc > 1 needs a relaunch function")
        relaunch("adapter", first)
    else:
        result.serving = adaptation.adapter(serve_cfg, progress)
    result.item_delta = fit_served_item_delta(model_cfgs[0], progress=progress)  # every seed of the run teaches
    return result
