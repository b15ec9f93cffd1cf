"""The item delta beside the per-request edit over request rates, on a tiny ml-100k run (seed 1 teaches seed 0
beside itself): the curve's ends are the table's rows, the realised rates are the asked ones."""

from __future__ import annotations

import numpy as np
import pytest

from llm_cloud.distill import DistillConfig
from llm_cloud.item_delta import ItemDeltaConfig
from llm_cloud.teacher import EnsembleTeacher
from recipes.base import train
from recipes.config import load_recipe_config
from recipes.delta_rates import POLICIES, RATES, evaluate_delta_rates, periods, time_sorted
from recsys.checkpoint import load_checkpoint
from recsys.experiment import load_dataset_split
from tests.llm_cloud.helpers import tiny_overrides


def test_the_curves_ends_are_the_tables_rows_and_the_rates_are_kept(workdir, tmp_path):
    cfg = load_recipe_config(overrides=[*tiny_overrides(workdir, tmp_path / "runs"), "seeds=[0,1]"])
    train(cfg, progress=False)
    split = load_dataset_split(cfg)
    teacher = EnsembleTeacher.load([cfg.run_dir(0), cfg.run_dir(1)])
    device = load_checkpoint(cfg.run_dir(0))[0]
    res = evaluate_delta_rates(split, {0: device}, teacher, DistillConfig(steps=10),
                               ItemDeltaConfig(steps=20, lr=0.05), k=10, limit=400)  # fmt: skip
    curves = res.curves[0]
    assert set(curves) == set(POLICIES) and all(set(c) == set(RATES) for c in curves.values())
    row = {m: runs[0]["ndcg@10"] for m, runs in res.table.items()}
    for policy in POLICIES:
        for rate in RATES:
            assert curves[policy][rate]["rate"] == pytest.approx(rate, abs=0.08)
    assert curves["edit"][0.0]["ndcg@10"] == pytest.approx(row["device alone"])
    assert curves["item delta + edit"][0.0]["ndcg@10"] == pytest.approx(row["device + item delta (no request)"])
    assert curves["edit"][1.0]["ndcg@10"] == pytest.approx(row["device + edit, 100 % random asks"])
    assert curves["edit"][0.2]["ndcg@10"] == pytest.approx(row["device + edit, 20 % random asks"])
    assert row["device + item delta (no request)"] != row["device alone"]  # the delta moves rankings
    assert np.isfinite(row["teacher (upper bound)"]) and res.fit_seconds[0] > 0


def test_the_order_protocols_periods_are_its_rows_each_in_time_order(ml100k_split):
    split = ml100k_split[1]  # shift protocol: the two ways agree on which rows make each period
    for by_time, as_stream in zip(time_sorted(split), periods(split)):
        assert np.all(np.diff(by_time.time) >= 0)
        assert sorted(by_time.target.tolist()) == sorted(as_stream.target.tolist())
    assert len(time_sorted(split, 50)[1]) == 50
