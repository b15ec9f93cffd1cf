"""The torch-free reader of the wire formats decodes what ``recsys.runtime`` writes and reads, value for value."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from persona_device.wire import Edit, OodRule, Payload, Snapshot, part_names
from recsys import ood
from recsys.models import HeadEdit
from recsys.wire import EditDecoder, EditPayload, PrototypeSnapshot, pack
from recsys.wire import part_names as torch_part_names

L, D, C = 2, 6, 4


def _edit(seed: int, skip: tuple[str, ...] = ()) -> HeadEdit:
    g = torch.Generator().manual_seed(seed)
    dW = [None if f"dW.{i}" in skip else torch.randn(D, D, generator=g) for i in range(L)]
    db = [None if f"db.{i}" in skip else torch.randn(D, generator=g) for i in range(L)]
    return HeadEdit(dW, db, clip=0.5)


def _same(edit: Edit, want: HeadEdit, atol: float = 0.0) -> None:
    assert edit.clip == want.clip
    for got, ref in zip(edit.dW + edit.db, want.dW + want.db):
        assert (got is None) == (ref is None)
        if ref is not None:
            assert np.allclose(got, ref.numpy(), atol=atol, rtol=0)


@pytest.mark.parametrize("encoding", ["json", "fp32", "fp16"])
@pytest.mark.parametrize("skip", [(), ("dW.0", "db.0", "dW.1")])
def test_dense_and_sparse_edits_decode_as_the_torch_runtime_decodes_them(encoding, skip):
    wire = EditPayload.from_head_edit(_edit(0, skip), "v", 1, encoding).model_dump_json()
    want = EditPayload.model_validate_json(wire).head_edit()
    _same(Payload.from_dict(json.loads(wire)).dense_edit(), want)
    assert part_names(3) == torch_part_names(3)


def _decoder(k: int = 3) -> EditDecoder:
    g = torch.Generator().manual_seed(5)
    out = D * D + D
    return EditDecoder(n_layers=L, dim=D, code_dim=C, clip=0.3, residual_clip=0.1, total_clip=1.0, n_prototypes=k,
                       weights=pack(torch.randn(L, out, C, generator=g), "<f4"),
                       biases=pack(torch.randn(L, out, generator=g) * 0.1, "<f4"),
                       centres=pack(torch.randn(k, L, C, generator=g), "<f4"))  # fmt: skip


@pytest.mark.parametrize("prototype_id", [None, 2])
def test_code_edits_decode_as_the_torch_runtime_decodes_them(prototype_id):
    decoder = _decoder()
    protos = [EditPayload.from_head_edit(_edit(k), "v", k, "fp32") for k in range(3)]
    snap = PrototypeSnapshot(version="v", dim=D, signatures=torch.randn(3, D).tolist(), edits=protos, decoder=decoder)
    code = EditPayload.from_code(torch.randn(L, C), "v", prototype_id, 0.4, D).model_dump_json()
    want = EditPayload.model_validate_json(code).head_edit(decoder, [p.head_edit() for p in protos])
    mine = Snapshot.from_dict(json.loads(snap.model_dump_json()))
    got = mine.decoder.decode(Payload.from_dict(json.loads(code)), [p.dense_edit() for p in mine.edits])
    _same(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="prototype_id 5 is not in the cached bank"):
        mine.decoder.decode(Payload.from_dict({**json.loads(code), "prototype_id": 5}), [])


def test_the_ood_rule_flags_what_the_torch_score_flags():
    score = ood.OodScore(w_entropy=1.5, w_proto=0.5, bias=-9.0, proto_logodds=[0.0, 2.0, -1.0], threshold=0.3)
    ent = torch.linspace(5.0, 7.0, 101)
    k = torch.arange(101) % 3
    want = (score.score(ent, k) > score.threshold).tolist()
    got = OodRule.from_dict(score.model_dump()).flags(ent.numpy(), k.tolist())
    assert got == want and any(got) and not all(got)


def test_stacked_edits_are_clipped_and_zero_where_a_part_is_not_edited():
    dw, db = Edit([np.full((D, D), 3.0, np.float32), None], [None, np.full(D, -0.2, np.float32)], 0.5).stacked(L, D)
    assert dw.shape == (L, D, D) and db.shape == (L, D)
    assert (dw[0] == 0.5).all() and (dw[1] == 0).all() and (db[0] == 0).all() and (db[1] == np.float32(-0.2)).all()
    with pytest.raises(ValueError, match="edit of 2 layers, the head has 3"):
        Edit([None, None], [None, None]).stacked(3, D)


@pytest.mark.parametrize("bad, message", [
    ({"version": "v", "extra": 1}, "unknown field"),
    ({"clip": 1.0}, "missing field"),
    ({"version": "v", "encoding": "int8"}, "unknown encoding"),
    ({"version": "v", "clip": 0}, "clip must be > 0"),
    ({"version": "v", "encoding": "json", "parts": ["db.0"]}, "parts are for fp32 / fp16"),
    ({"version": "v", "encoding": "fp32", "n_layers": 2, "parts": ["db.1", "db.0"]}, "in that order"),
])  # fmt: skip
def test_a_malformed_payload_is_refused_as_the_torch_runtime_refuses_it(bad, message):
    with pytest.raises(ValueError, match=message):
        Payload.from_dict(bad)
    with pytest.raises(ValueError):
        EditPayload.model_validate(bad)


def test_an_old_cache_with_a_distance_threshold_loads_without_it(tmp_path):
    snap = PrototypeSnapshot(version="v", dim=D, signatures=torch.randn(2, D).tolist(),
                             edits=[EditPayload.from_head_edit(_edit(k), "v", k, "fp16") for k in range(2)])
    (tmp_path / "p.json").write_text(json.dumps({**json.loads(snap.model_dump_json()), "ood_threshold": 1.5}))
    mine = Snapshot.load(tmp_path / "p.json")
    assert mine.ood is None and mine.size == 2 and mine.signatures.shape == (2, D) and mine.decoder is None
    assert PrototypeSnapshot.load(tmp_path / "p.json").size == 2
