"""The device's edit wire format (recsys/wire.py): sparse edits (some parts ``None``) travel compact and decode
exactly; malformed parts are refused."""

from __future__ import annotations

import base64

import pytest
import torch
from pydantic import ValidationError

from persona_device.wire import part_names
from recsys.models import HeadEdit
from recsys.wire import EditPayload

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
