"""recipes.adaptation: the serving adapter + bank of a tiny trained ml-100k SASRec, every artifact noted in the run's
manifest and read back by the editor; the method-name check."""

from __future__ import annotations

import json

import pytest

from llm_cloud.editor import AdapterEditor, load_editor
from llm_cloud.methods import METHODS
from recipes.adaptation import UnknownMethodError, adapter, check_methods
from recipes.base import train
from recipes.config import load_recipe_config
from recsys import run_layout
from tests.llm_cloud.helpers import tiny_overrides


def test_adapter_and_the_editor_reads_the_manifest(ml100k_split, workdir, tmp_path):
    cfg = load_recipe_config(overrides=[*tiny_overrides(workdir, tmp_path / "runs"),
                                        f"reports_dir={tmp_path / 'reports'}", "prototypes.variant=centre"])
    (run,) = train(cfg, progress=False)
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


def test_method_names_are_checked_and_all_means_every_method_in_order():
    assert check_methods(["all"]) == list(METHODS)
    assert check_methods(["static", "proto"]) == ["static", "proto"]
    with pytest.raises(UnknownMethodError, match="unknown method 'lora' \\(known: "):
        check_methods(["static", "lora"])
