"""recipes.base: train a tiny ml-100k SASRec (each run noted in its manifest), evaluate it with popularity (the
report merged with earlier rows of the same setting), and the model-name check."""

from __future__ import annotations

import json

import pytest

from recipes.base import check_models, checkpoint_config, evaluate, prepare, train
from recipes.config import load_recipe_config, with_overrides
from recsys import run_layout
from recsys.models import UnknownModelError
from tests.llm_cloud.helpers import tiny_overrides


def test_train_then_evaluate_writes_the_base_report(ml100k_split, workdir, tmp_path):
    cfg = load_recipe_config(overrides=[*tiny_overrides(workdir, tmp_path / "runs"),
                                        f"reports_dir={tmp_path / 'reports'}", "prototypes.variant=centre"])
    (run,) = train(cfg, progress=False)
    assert run == cfg.run_dir(0) and run_layout.read_manifest(run).checkpoint.config_digest
    report = evaluate(cfg, ["pop", "sasrec"])
    assert set(report.results) == {"popularity", "sasrec"} and "| sasrec |" in report.table
    base_json = tmp_path / "reports" / "ml-100k" / "base.json"
    assert json.loads(base_json.read_text())["meta"]["seeds"] == [0]
    evaluate(cfg, ["pop"])  # one model evaluated again: the other models' rows of the same setting stay
    kept = json.loads(base_json.read_text())
    assert set(kept["runs"]) == {"popularity", "sasrec"} and kept["meta"]["item_side"] == cfg.model_params.item_side
    other = "fused" if cfg.model_params.item_side == "none" else "none"
    evaluate(with_overrides(cfg, [f"model_params.item_side={other}"]), ["pop"])  # another item view: not mixed in
    assert set(json.loads(base_json.read_text())["runs"]) == {"popularity"}
    assert report.report == tmp_path / "reports" / "ml-100k" / "base" and report.seconds > 0


def test_model_names_are_checked_and_pop_only_where_popularity_is_asked_for():
    assert check_models(["sasrec", "gru4rec"]) == ["sasrec", "gru4rec"]
    assert check_models(["pop", "bert4rec"], popularity=True) == ["pop", "bert4rec"]
    with pytest.raises(UnknownModelError, match="unknown model 'pop'"):
        check_models(["pop"])
    with pytest.raises(UnknownModelError, match="unknown model 'caser'"):
        evaluate(load_recipe_config(), ["pop", "caser"])  # before anything is loaded


def test_the_checkpoint_digest_covers_the_sections_a_checkpoint_depends_on(workdir):
    cfg = load_recipe_config(overrides=[f"data.workdir={workdir}"])
    assert set(checkpoint_config(cfg)) == {"dataset", "model", "data", "model_params", "train", "eval"}
    assert checkpoint_config(with_overrides(cfg, ["adapter.window=3"])) == checkpoint_config(cfg)
    assert checkpoint_config(with_overrides(cfg, ["train.lr=0.01"])) != checkpoint_config(cfg)
    assert prepare(cfg) == workdir / "ml-100k"
