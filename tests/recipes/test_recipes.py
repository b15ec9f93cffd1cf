"""The recipes end to end on a tiny ml-100k SASRec (seconds): train → evaluate → adapter → the editor,
every artifact noted in the run's manifest; the main job's adapter config; the configs' layering."""

from __future__ import annotations

import json

from llm_cloud.editor import AdapterEditor, load_editor
from recipes.adaptation import adapter
from recipes.base import evaluate, train
from recipes.config import RecipeConfig, load_recipe_config, with_overrides
from recipes.main import MAIN_JOB_ADAPTER, serving_config
from recsys import run_layout
from serving.config import AppConfig, load_app_config
from tests.llm_cloud.helpers import tiny_overrides


def test_train_evaluate_adapter_and_the_editor_reads_the_manifest(ml100k_split, workdir, tmp_path):
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

    (written,) = adapter(cfg, progress=False)
    assert written.adapter_dir == run_layout.adapter_dir(run) and written.size == 2
    manifest = json.loads(run_layout.manifest_file(run).read_text())
    assert set(manifest["adapters"]) == {"main"} and set(manifest["banks"]) == {"centre"}
    assert manifest["prototypes"]["path"] == "prototypes.json" and written.prototypes.is_file()
    editor = load_editor(run, 16, written.adapter_dir)
    assert isinstance(editor, AdapterEditor) and editor.snapshot().size == 2
    (run / "bank-finetune").mkdir()  # not in the manifest, so not served
    (run / "bank-finetune" / "bank.yaml").write_text("{}")
    assert isinstance(load_editor(run, 16, written.adapter_dir), AdapterEditor)


def test_main_job_adapter_config_is_the_layered_one():
    cfg = load_app_config(overrides=["model=gru4rec", "adapter.epochs=9"])
    first = serving_config(cfg, 3)
    assert with_overrides(cfg, first) == load_app_config(overrides=["model=gru4rec", "adapter.epochs=9", *first])
    assert first[-len(MAIN_JOB_ADAPTER):] == MAIN_JOB_ADAPTER and isinstance(with_overrides(cfg, first), AppConfig)


def test_app_config_is_a_recipe_config():
    assert issubclass(AppConfig, RecipeConfig)
    assert set(RecipeConfig.model_fields) | {"serve"} == set(AppConfig.model_fields)
