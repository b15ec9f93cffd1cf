"""recsys.experiment: the prepared split, test-split evaluation of saved checkpoints (and popularity), the base
report and its merge with an earlier one."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from recsys.checkpoint import CheckpointError, save_checkpoint
from recsys.config import load_config
from recsys.datasets import is_complete
from recsys.evaluate import evaluate_rows, model_score_fn
from recsys.experiment import evaluate_models, load_dataset_split, report_base
from recsys.models import EditableSeqRec


def _cfg(workdir, tmp_path, *more):
    return load_config(overrides=[f"data.workdir={workdir}", f"output_dir={tmp_path / 'runs'}",
                                  f"reports_dir={tmp_path / 'reports'}", "seeds=[0]", "model_params.item_side=none",
                                  "model_params.hidden_size=16", "model_params.inner_size=32", *more])


def test_load_dataset_split_prepares_the_atomic_files_first(tmp_path):
    cfg = load_config(overrides=[f"data.workdir={tmp_path}"])
    split = load_dataset_split(cfg)
    assert is_complete(tmp_path / "ml-100k") and split.name == "ml-100k" and split.n_items == 1683


def test_evaluate_models_scores_each_checkpoint_on_the_test_split_and_popularity_per_seed(ml100k_split, tmp_path):
    base_cfg, split = ml100k_split
    split = dataclasses.replace(split, test=SimpleNamespace(inter_feat=split.eval_rows("test")[:1500]))  # fewer rows
    cfg = _cfg(base_cfg.data.workdir, tmp_path, "seeds=[0,1]")
    models = {}
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        models[seed] = EditableSeqRec("sasrec", cfg.model_params, split.n_items, cfg.data.max_seq_len).eval()
        save_checkpoint(cfg.run_dir(seed), models[seed], cfg.dataset, split.item_tokens)
    results = evaluate_models(cfg, ["pop", "sasrec"], split)
    assert list(results) == ["popularity", "sasrec"] and len(results["popularity"]) == len(results["sasrec"]) == 2
    assert results["popularity"][0] == results["popularity"][1]
    want = evaluate_rows(model_score_fn(models[1]), split.eval_rows("test"), split.config, 512)
    assert results["sasrec"][1]["ndcg@10"] == pytest.approx(want["ndcg@10"], abs=1e-6)
    assert results["sasrec"][0]["ndcg@10"] != results["sasrec"][1]["ndcg@10"]
    assert "tail/ndcg@10" in results["sasrec"][0] and "new/rows" in results["popularity"][0]


def test_a_missing_or_foreign_checkpoint_says_what_to_run(ml100k_split, tmp_path):
    base_cfg, split = ml100k_split
    cfg = _cfg(base_cfg.data.workdir, tmp_path)
    with pytest.raises(CheckpointError, match=r"run `persona train model=gru4rec` first"):
        evaluate_models(cfg, ["gru4rec"], split)
    small = EditableSeqRec("sasrec", cfg.model_params, 10, cfg.data.max_seq_len)
    save_checkpoint(cfg.run_dir(0), small, cfg.dataset, split.item_tokens[:10])
    with pytest.raises(CheckpointError, match="trained on 10 items, dataset has 1683"):
        evaluate_models(cfg, ["sasrec"], split)


def test_report_base_writes_the_report_and_keeps_earlier_rows_of_the_same_setting(tmp_path):
    cfg = _cfg(tmp_path / "atomic", tmp_path)
    sasrec = {"sasrec": [{k: 0.05 for k in ("ndcg@5", "ndcg@10", "ndcg@20", "hit@5", "hit@10", "hit@20", "mrr@10")}]}
    gru = {"gru4rec": [{k: 0.06 for k in sasrec["sasrec"][0]}]}
    table = report_base(cfg, sasrec, 1.0)
    assert "| sasrec | 1 |" in table
    path = tmp_path / "reports" / "ml-100k" / "base.json"
    report_base(cfg, gru, 2.0)  # `persona evaluate --models gru4rec`: SASRec's row stays
    data = json.loads(path.read_text())
    assert list(data["runs"]) == ["sasrec", "gru4rec"] and data["meta"]["seconds"] == 2.0
    assert "| gru4rec | 1 |" in (tmp_path / "reports" / "ml-100k" / "base.md").read_text()
    report_base(cfg.model_copy(update={"seeds": [0, 1]}), gru, 3.0)  # another setting: the old rows go
    assert list(json.loads(path.read_text())["runs"]) == ["gru4rec"]
