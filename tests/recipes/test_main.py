"""recipes.main: the main job's adapter step is the layered config plus its sample, and a multi-process step is
relaunched (or refused without a way to relaunch it)."""

from __future__ import annotations

import pytest

from recipes.config import load_recipe_config, with_overrides
from recipes.main import MAIN_JOB_ADAPTER, LaunchError, main_job, serving_config
from serving.config import AppConfig, load_app_config


def test_main_job_adapter_config_is_the_layered_one():
    cfg = load_app_config(overrides=["model=gru4rec", "adapter.epochs=9"])
    first = serving_config(cfg, 3)
    assert with_overrides(cfg, first) == load_app_config(overrides=["model=gru4rec", "adapter.epochs=9", *first])
    assert first[-len(MAIN_JOB_ADAPTER):] == MAIN_JOB_ADAPTER and isinstance(with_overrides(cfg, first), AppConfig)


def test_ddp_training_needs_a_relaunch_and_a_failed_one_stops_the_job(workdir, tmp_path):
    cfg = load_recipe_config(overrides=[f"data.workdir={workdir}", f"output_dir={tmp_path}", "train.nproc=2",
                                        "model_params.item_side=none"])
    with pytest.raises(ValueError, match="train.nproc > 1 needs a relaunch function"):
        main_job(cfg, [cfg], skip_adapter=True)
    calls = []

    def relaunch(command: str, overrides: list[str]) -> None:
        calls.append((command, overrides))
        raise LaunchError(command, 3)

    with pytest.raises(LaunchError, match="train: exit code 3") as failed:
        main_job(cfg, [cfg, with_overrides(cfg, ["model=gru4rec"])], skip_adapter=True, relaunch=relaunch)
    assert failed.value.code == 3 and calls == [("train", ["model=sasrec"])]  # the first model; nothing after it
    assert not (tmp_path / "ml-100k").exists()  # no codebook built, nothing trained here
