"""The device runtime (recsys/runtime.py): its batched head applies received edits next to dense edits and the
base head, and the one-request API is the batched one."""

from __future__ import annotations

import numpy as np
import torch

from recsys.config import ModelConfig
from recsys.models import EditableSeqRec
from recsys.runtime import DeviceRuntime
from recsys.wire import EditPayload
from tests.recsys.test_recsys_wire import D, L, bias_only, dense, over_the_wire


def _runtime() -> DeviceRuntime:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=D, inner_size=32, n_layers=1, head_layers=L, dropout=0.0, item_side="none")
    model = EditableSeqRec("sasrec", cfg, 40, 8)
    with torch.no_grad():
        for layer in model.head.layers:
            layer.weight.normal_(0, 0.2)
    return DeviceRuntime(model, np.array(["[PAD]"] + [str(i) for i in range(1, 40)]))


def test_the_device_applies_a_received_bias_edit_beside_dense_edits_and_the_base_head():
    runtime = _runtime()
    received = runtime.decode_edit(over_the_wire(EditPayload.from_head_edit(bias_only(), "v", None, "fp32")))
    other = runtime.decode_edit(over_the_wire(EditPayload.from_head_edit(bias_only(7), "v", None, "fp16")))
    full = dense()
    histories = [[1, 2, 3], [4, 5], [6], [7, 8, 9, 10], []]
    edits = [received, full, None, other, received]
    states = runtime.user_states(histories)
    batched = runtime.head_batch(states, edits)
    for b, edit in enumerate(edits):  # each row as the head alone gives it (the batch stacks zeros for None parts)
        with torch.inference_mode():
            alone = runtime.model.head(states[b : b + 1], edit)[0]
        assert torch.allclose(batched[b], alone, atol=1e-6)
    ranked = runtime.rank_states(states, edits, [5] * len(edits), [None] * len(edits))
    for b, (items, _) in enumerate(ranked):
        assert items == runtime.rank(histories[b], 5, edit=edits[b])[0]
    assert runtime.rank(histories[0], 5, edit=received)[0] != runtime.rank(histories[0], 5)[0]  # it does change
