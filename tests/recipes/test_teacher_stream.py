"""The teacher-over-the-stream recipe end to end on real ml-100k rows (small untrained models, few rows)."""

from __future__ import annotations

import numpy as np
import torch

from llm_cloud.distill import DistillConfig
from llm_cloud.fresh_teacher import RefreshConfig
from llm_cloud.teacher import EnsembleTeacher
from recipes.teacher_stream import RATES, evaluate_stream, fresh_teacher_valid_score, stream_of, teacher_table
from recsys.config import ModelConfig
from recsys.models import EditableSeqRec


def small(name: str, seed: int, n_items: int) -> EditableSeqRec:
    torch.manual_seed(seed)
    m = ModelConfig(hidden_size=16, inner_size=32, n_layers=1, head_layers=2, dropout=0.0, item_side="none")
    return EditableSeqRec(name, m, n_items, 50).eval()


def test_every_method_and_policy_on_the_same_rows(ml100k_split):
    _, split = ml100k_split
    n = split.n_items
    members = EnsembleTeacher([small("sasrec", 1, n), small("gru4rec", 2, n)], split.item_tokens, ["a", "b"])
    refresh = RefreshConfig(every_events=100, epochs=1, lr=1e-3, batch_size=64)
    res = evaluate_stream(split, {0: small("sasrec", 0, n)}, members, refresh, DistillConfig(steps=10), k=16,
                          limit=200)  # fmt: skip
    stream, n_valid = stream_of(split, 200)
    assert n_valid == 200 and len(stream) == 400
    assert set(res.table) >= {"device alone", "teacher, fresh (upper bound)", "device + fresh edit, fresh teacher"}
    assert all(r[0]["seen/rows"] + r[0]["new/rows"] == 200 for r in res.table.values())
    for v in res.versions:  # no look-ahead: each version trained before the rows it serves
        assert v["trained_until"] is not None and v["trained_until"] < v["valid_from"]
    curves = res.curves["fresh"][0]
    assert set(curves) == {"random", "oracle", "detector", "random, for its event only", "oracle, for its event only",
                           "detector, for its event only", "top-k list, random"}
    for policy in curves:
        assert curves[policy][0.0]["rate"] == 0 and curves[policy][1.0]["rate"] == 1
        assert abs(curves[policy][0.2]["rate"] - 0.2) <= 0.1, policy
    fresh_all = curves["random"][1.0]["ndcg@10"]
    assert np.isclose(fresh_all, res.table["device + fresh edit, fresh teacher"][0]["ndcg@10"])
    assert set(curves["random"]) == set(RATES)
    assert 0 <= fresh_teacher_valid_score(members, split, refresh, limit=200) <= 1


def test_the_teacher_alone_frozen_and_fresh_on_the_test_rows(ml100k_split):
    """``--teacher-only``: the frozen teacher scores as the evaluation scores it; the fresh one is refreshed
    before every version and never on a row at or after the version's first row."""
    _, split = ml100k_split
    n = split.n_items
    members = EnsembleTeacher([small("sasrec", 1, n), small("gru4rec", 2, n)], split.item_tokens, ["a", "b"])
    before = [p.detach().clone() for p in members.models[0].parameters()]
    refresh = RefreshConfig(every_events=100, epochs=1, lr=1e-2, batch_size=64)
    table, versions = teacher_table(split, members, refresh, limit=200)
    assert set(table) == {"teacher, frozen", "teacher, fresh"}
    assert all(torch.equal(a, b) for a, b in zip(before, members.models[0].parameters()))  # frozen stays frozen
    assert len(versions) == 2 and all(v["trained_until"] < v["valid_from"] for v in versions)
    frozen, fresh = table["teacher, frozen"][0], table["teacher, fresh"][0]
    assert frozen["seen/rows"] + frozen["new/rows"] == 200
    assert frozen["ndcg@10"] != fresh["ndcg@10"]  # lr 1e-2 on 300 rows moves an untrained teacher
