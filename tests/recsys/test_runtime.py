"""The device runtime's edit wire format: sparse edits (some parts ``None``) travel compact and decode exactly,
and the device's batched head applies them next to dense edits and the base head."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from recsys.config import ModelConfig
from recsys.models import EditableSeqRec, HeadEdit
from recsys.runtime import DeviceRuntime, EditPayload, part_names

D, L = 16, 2


def bias_only(seed: int = 0) -> HeadEdit:
    """What the distilled edit is: the last layer's bias alone (``llm_cloud.distill.last_bias_edit``, one row)."""
    g = torch.Generator().manual_seed(seed)
    return HeadEdit([None] * L, [None] * (L - 1) + [torch.randn(D, generator=g) * 0.4], clip=1.0)


def dense(seed: int = 1) -> HeadEdit:
    g = torch.Generator().manual_seed(seed)
    return HeadEdit([torch.randn(D, D, generator=g) * 0.1 for _ in range(L)],
                    [torch.randn(D, generator=g) * 0.1 for _ in range(L)], clip=1.0)  # fmt: skip


def over_the_wire(payload: EditPayload) -> EditPayload:
    """As the cloud sends it (``response_model_exclude_none``) and the device parses it."""
    return EditPayload.model_validate_json(payload.model_dump_json(exclude_none=True))


def parts_of(edit: HeadEdit) -> list[torch.Tensor | None]:
    return [t for pair in zip(edit.dW, edit.db) for t in pair]


def test_a_bias_only_edit_carries_only_its_floats_and_decodes_to_the_same_edit():
    edit = bias_only()
    for encoding, size, rounded in (("fp32", 4 * D, edit.db[-1]), ("fp16", 2 * D, edit.db[-1].half().float())):
        payload = over_the_wire(EditPayload.from_head_edit(edit, "v", None, encoding))
        assert payload.parts == [f"db.{L - 1}"] and payload.n_layers == L and payload.dim == D
        assert len(base64.b64decode(payload.data)) == size  # D floats, nothing else
        got = payload.head_edit()
        assert got.dW == [None] * L and got.db[:-1] == [None] * (L - 1) and got.clip == edit.clip
        assert torch.equal(got.db[-1], rounded)  # exactly as solved (fp32) or its fp16 rounding
    got = over_the_wire(EditPayload.from_head_edit(edit, "v", None, "json")).head_edit()
    assert got.dW == [None] * L and torch.equal(got.db[-1], edit.db[-1])


def test_a_dense_edit_names_no_parts_and_decodes_as_before():
    edit = dense()
    payload = EditPayload.from_head_edit(edit, "v", 3, "fp32")
    assert payload.parts is None and "parts" not in payload.model_dump_json(exclude_none=True)
    assert len(base64.b64decode(payload.data)) == 4 * L * (D * D + D)
    got = over_the_wire(payload).head_edit()
    assert all(torch.equal(a, b) for a, b in zip(parts_of(got), parts_of(edit)))
    assert got.dW[0].shape == (D, D) and got.db[0].shape == (D,)


def test_any_subset_of_parts_round_trips():
    full = dense()
    for keep in ([0], [1, 2], [0, 3], [3]):
        edit = HeadEdit(*[[t if 2 * i + j in keep else None for i, t in enumerate(ts)] for j, ts in
                          enumerate((full.dW, full.db))], clip=0.5)  # fmt: skip
        payload = over_the_wire(EditPayload.from_head_edit(edit, "v", None, "fp32"))
        assert payload.parts == [part_names(L)[k] for k in keep]
        got = payload.head_edit()
        for a, b in zip(parts_of(got), parts_of(edit)):
            assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"parts": ["db.1", "dW.0"]}, "in that order"),
        ({"parts": ["db.2"]}, "some of"),
        ({"parts": ["db.1", "db.1"]}, "each once"),
        ({"parts": []}, "some of"),
        ({"encoding": "code"}, "parts are for fp32 / fp16"),
    ],
)
def test_malformed_parts_are_refused(change, message):
    payload = EditPayload.from_head_edit(bias_only(), "v", None, "fp32").model_dump()
    with pytest.raises(ValidationError, match=message):
        EditPayload.model_validate({**payload, **change})


def test_data_that_does_not_match_its_parts_is_refused():
    payload = EditPayload.from_head_edit(bias_only(), "v", None, "fp32")
    wrong = payload.model_copy(update={"parts": ["db.0", "db.1"]})  # says 2·D floats, carries D
    with pytest.raises(ValueError, match="expected"):
        wrong.head_edit()


def test_an_edit_of_no_parts_is_the_base_head():
    payload = over_the_wire(EditPayload.from_head_edit(HeadEdit([None] * L, [None] * L), "v", None, "fp32"))
    assert payload.data is None and payload.head_edit() is None


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
