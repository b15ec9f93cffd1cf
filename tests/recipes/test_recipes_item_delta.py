"""The main job's item delta on a tiny ml-100k run (two seeds: seed 1 teaches seed 0 beside itself): written beside
the served checkpoint, fitted on the validation rows only, brought to the device by the distilled editor's bank."""

from __future__ import annotations

import torch

from llm_cloud.distill import DistillConfig
from llm_cloud.distill_editor import DistilledEditor
from llm_cloud.teacher import EnsembleTeacher
from recipes.base import train
from recipes.config import load_recipe_config, with_overrides
from recipes.item_delta import fit_served_item_delta
from recsys import run_layout
from recsys.checkpoint import load_checkpoint
from recsys.experiment import load_dataset_split
from recsys.wire import ItemTableDelta
from tests.llm_cloud.helpers import tiny_overrides


def cross_entropy(model, rows, target, table) -> float:
    with torch.no_grad():
        q = model.head(model.user_state(rows["item_id_list"], rows["item_length"]))
        logp = torch.log_softmax(model.logits(q, table), dim=-1)[:, 1:]
    return float(-(target.exp()[:, 1:] * logp).sum(1).mean())


def test_the_served_checkpoint_gets_a_delta_toward_the_runs_teacher(workdir, tmp_path):
    cfg = load_recipe_config(overrides=[*tiny_overrides(workdir, tmp_path / "runs"), "item_delta.rows=40",
                                        "item_delta.steps=40", "item_delta.lr=0.03"])  # fmt: skip
    split = load_dataset_split(cfg)  # the tiny config's window (16 items)
    train(cfg, progress=False)
    assert fit_served_item_delta(cfg, split, progress=False) is None  # its own checkpoint alone teaches it nothing
    train(with_overrides(cfg, ["seeds=[1]"]), progress=False)
    two = with_overrides(cfg, ["seeds=[0,1]"])
    path = fit_served_item_delta(two, split, progress=False)
    assert path == run_layout.item_delta_file(cfg.run_dir(0))
    delta = ItemTableDelta.model_validate_json(path.read_text())
    assert len(delta.ids) == 40 and delta.encoding == "fp32"

    model, _, _ = load_checkpoint(cfg.run_dir(0))
    teachers = [cfg.run_dir(0), cfg.run_dir(1)]
    rows = split.eval_rows("valid")
    target = EnsembleTeacher.load(teachers).log_probs(rows["item_id_list"], rows["item_length"])
    editor = DistilledEditor.load(cfg.run_dir(0), teachers, DistillConfig())
    assert editor.snapshot().item_delta is not None and editor.snapshot().item_delta.encoding == "fp16"
    assert cross_entropy(model, rows, target, editor.items) < cross_entropy(model, rows, target, None)
    path.unlink()
    without = DistilledEditor.load(cfg.run_dir(0), teachers, DistillConfig())
    assert without.snapshot().item_delta is None and without.items is None and without.version != editor.version
