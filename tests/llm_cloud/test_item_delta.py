"""The item-table delta: fitted toward a teacher on a real (tiny) model, sent in the bank snapshot, and scored
with by the device exactly as the cloud fitted it (the round trip); bad deltas are refused whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm_cloud.item_delta import ItemDeltaConfig, fit_item_delta
from persona_device.wire import ItemDelta, Snapshot, scoring_table
from recsys.runtime import DeviceRuntime
from recsys.wire import ItemTableDelta, PrototypeSnapshot
from tests.llm_cloud.test_teacher import N_ITEMS, TOKENS, histories, tiny_model


def fitted(rows: int = 12):
    """A device, its states, a teacher that is the device liking items 1-10 more, and the fitted delta."""
    device = teacher = tiny_model("sasrec", 0)
    seq, length = histories(64)
    with torch.no_grad():
        states = device.user_state(seq, length)
        logits = teacher.score(seq, length)
        logits[:, 1:11] += 3.0
        target = torch.log_softmax(logits, dim=-1)
    delta = fit_item_delta(device, states, target, ItemDeltaConfig(rows=rows, steps=150, lr=0.05))
    return device, states, target, delta


def cross_entropy(device, states, target, table) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(device.logits(device.head(states), table), dim=-1)
    return float(-(target.exp()[:, 1:] * logp[:, 1:]).sum(1).mean())


def test_the_delta_brings_the_device_toward_the_teacher_on_at_most_rows_rows():
    device, states, target, delta = fitted()
    assert len(delta.ids) == 12 and 0 not in delta.ids.tolist() and delta.rows.shape == (12, device.head.dim)
    table = delta.table(device.item_embeddings)
    assert cross_entropy(device, states, target, table) < 0.9 * cross_entropy(device, states, target, None)
    assert len(set(delta.ids.tolist()) & set(range(1, 11))) >= 9  # the rows the teacher moved
    untouched = torch.ones(N_ITEMS, dtype=torch.bool)
    untouched[delta.ids] = False
    assert torch.equal(table[untouched], device.item_embeddings[untouched])


@pytest.mark.parametrize("encoding, atol", [("fp32", 0.0), ("fp16", 2e-3)])
def test_the_device_scores_with_the_delta_it_fetched_with_the_bank(encoding, atol):
    device, _, _, delta = fitted()
    wire = PrototypeSnapshot(version="v1", dim=device.head.dim,
                             item_delta=ItemTableDelta.of(delta.ids, delta.rows, encoding)).model_dump_json()
    rt = DeviceRuntime(device, TOKENS)
    history = [3, 9, 14, 2]
    before = rt.scores(history)
    rt.set_prototypes(PrototypeSnapshot.model_validate_json(wire))  # what the device caches
    seq, length = rt.encode_history(history)
    with torch.no_grad():
        want = device.logits(device.head(device.user_state(seq, length)), delta.table(device.item_embeddings))[0]
    got = rt.scores(history)
    assert torch.allclose(got[1:], want[1:], atol=atol, rtol=0) and not torch.allclose(got[1:], before[1:], atol=1e-2)
    torch_free = scoring_table(device.item_embeddings.detach().numpy(), Snapshot.from_dict(json.loads(wire)).item_delta)
    assert np.allclose(torch_free, delta.table(device.item_embeddings).numpy(), atol=atol)


def test_a_delta_that_does_not_fit_the_table_is_refused_and_the_cached_bank_kept():
    device, _, _, delta = fitted()
    rt = DeviceRuntime(device, TOKENS)
    good = PrototypeSnapshot(version="v1", dim=device.head.dim, item_delta=ItemTableDelta.of(delta.ids, delta.rows))
    rt.set_prototypes(good)
    table = rt.scoring_items.clone()
    rows = ItemTableDelta.of(delta.ids, delta.rows).rows
    bad = {"ids must be distinct": [1, 1] + delta.ids.tolist()[2:], "in 1..": [0] + delta.ids.tolist()[1:],
           "ids must be distinct item ids in 1..": [N_ITEMS] + delta.ids.tolist()[1:]}  # fmt: skip
    for why, ids in bad.items():
        snap = good.model_copy(update={"version": "v2", "item_delta": ItemTableDelta(ids=ids, rows=rows)})
        with pytest.raises(ValueError, match=why):
            rt.set_prototypes(snap)
    short = good.model_copy(update={"item_delta": ItemTableDelta(ids=delta.ids.tolist()[:-1], rows=rows)})
    with pytest.raises(ValueError, match="packed data holds"):
        rt.set_prototypes(short)
    with pytest.raises(ValueError, match=r"unknown field\(s\) extra"):
        ItemDelta.from_dict({"ids": [1], "rows": "", "extra": 1})
    assert rt.prototypes.version == "v1" and torch.equal(rt.scoring_items, table)
