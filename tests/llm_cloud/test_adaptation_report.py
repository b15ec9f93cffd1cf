"""The adaptation report: tables with AUC/UAUC columns, relative gains, OOD AUROC, plot files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_cloud.adaptation_report import N_TIME_WINDOWS, merge_with_report, report_adaptation
from llm_cloud.artifacts import ArtifactError
from recsys.metrics import auroc
from recsys.report import label
from serving.config import load_app_config


def test_labels():
    assert [label(k) for k in ("ndcg@10", "hit@5", "mrr@10", "uauc")] == ["NDCG@10", "HR@5", "MRR@10", "UAUC"]


def test_auroc_matches_definition():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert auroc(scores, labels) == 0.75
    assert np.isnan(auroc(scores, np.zeros(4, dtype=int)))


def test_report_writes_tables_plot_and_gains(tmp_path):
    cfg = load_app_config(overrides=[f"reports_dir={tmp_path}", "seeds=[0,1]"])
    metrics = lambda v: {"ndcg@10": v, "hit@10": 2 * v, "mrr@10": v / 2, "auc": 0.8, "uauc": 0.79}  # noqa: E731
    out = {
        "results": {"static": [metrics(0.05), metrics(0.04)], "edit": [metrics(0.055), metrics(0.044)]},
        "over_time": {"static": [[0.05] * N_TIME_WINDOWS] * 2, "proto-dyn": [[0.06] * N_TIME_WINDOWS] * 2},
        "ood_auroc": {"proto-dyn": [0.6, 0.62]},
        "timings": [],
        "window_edges": list(range(N_TIME_WINDOWS + 1)),
    }
    md = report_adaptation(cfg, out)
    assert "| edit | 2 |" in md and "UAUC" in md and "+10.0% vs static" in md and "OOD AUROC (proto-dyn): 0.610" in md
    directory = tmp_path / "ml-100k"
    payload = json.loads((directory / "adaptation-sasrec.json").read_text())
    assert payload["summary"]["edit"]["auc"]["mean"] == 0.8
    assert (directory / "adaptation-sasrec-ndcg-over-time.png").stat().st_size > 1000


def test_update_keeps_other_methods_and_refuses_another_item_view(tmp_path):
    cfg = load_app_config(overrides=[f"reports_dir={tmp_path}", "seeds=[0]"])
    row = {"ndcg@10": 0.05, "hit@10": 0.1, "mrr@10": 0.03, "auc": 0.8, "uauc": 0.79}
    out = lambda methods: {"results": {m: [row] for m in methods}, "over_time": {}, "ood_auroc": {},  # noqa: E731
                           "timings": [{"seed": 0}], "window_edges": []}
    report_adaptation(cfg, out(["static", "edit"]))
    assert json.loads((tmp_path / "ml-100k" / "adaptation-sasrec.json").read_text())["meta"]["item_side"] == "fused"
    assert set(merge_with_report(cfg, out(["served"]))["results"]) == {"static", "edit", "served"}
    other = load_app_config(overrides=[f"reports_dir={tmp_path}", "seeds=[0]", "model_params.item_side=none"])
    with pytest.raises(ArtifactError, match="item_side=fused"):
        merge_with_report(other, out(["served"]))
