"""The torch-free runtime against ``recsys.runtime.DeviceRuntime`` on the same histories and edits: a SASRec trained
on ml-100k, a real adapter + prototype bank (decoder, OOD score, cache gate) read from the same snapshot JSON, edits
as the cloud sends them (json, fp16, code). Identical top-k; a swap is allowed only between items whose torch scores
tie within 1e-4 (none did when this was written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm_cloud.adapter import Adapter
from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
from llm_cloud.adapter_data import training_samples
from llm_cloud.editor import AdapterEditor
from llm_cloud.item_delta import ItemDeltaConfig, fit_item_delta
from llm_cloud.prototype_build import build_bank
from persona_device.runtime import OnnxDeviceRuntime
from persona_device.wire import Snapshot
from recsys.runtime import DeviceRuntime
from recsys.wire import EditPayload, ItemTableDelta, PrototypeSnapshot
from tests.device_models import trained

TIE = 1e-4
K = 10


@pytest.fixture(scope="module")
def setup(ml100k_split, tmp_path_factory):
    """(torch runtime, onnx runtime, editor, histories, dir), both runtimes with the same cached bank file."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("onnx-runtime")
    t = trained("sasrec", ml100k_split, root)
    split = ml100k_split[1]
    editor = _editor(t.model, split.train_sequences[:80])
    (root / "prototypes.json").write_text(editor.snapshot().model_dump_json())  # what the device caches
    torch_rt = DeviceRuntime(t.model, t.tokens)
    torch_rt.set_prototypes(PrototypeSnapshot.load(root / "prototypes.json"))
    onnx_rt = OnnxDeviceRuntime.load(t.export_dir, root / "prototypes.json")
    return torch_rt, onnx_rt, editor, _histories(split, t.model.n_items, t.model.max_seq_len), root


def _editor(base, sequences) -> AdapterEditor:
    torch.manual_seed(0)
    adapter = Adapter(AdapterConfig(window=4, code_dim=8, clip=0.05), base.n_items, base.head.dim,
                      len(base.head.layers))  # fmt: skip
    for p in [*adapter.proj_w.parameters(), *adapter.proj_b.parameters()]:
        torch.nn.init.normal_(p, std=0.05)  # an untrained adapter's edit is zero: make it visible in rankings
    samples = training_samples(base, [np.asarray(s) for s in sequences], n_window=4, n_future=1)
    with torch.enable_grad():
        bank = build_bank(PrototypeConfig(k=3, variant="centre", ood_quantile=0.5), base, adapter,
                          samples, None, seed=0, calibration=(samples.state, samples.targets[:, 0]))
    return AdapterEditor(base, adapter, bank, None, "v1")


def _histories(split, n_items: int, max_len: int) -> list[list[int]]:
    rows = split.eval_rows("test")
    pick = np.random.default_rng(0).choice(len(rows), 120, replace=False)
    seqs = [rows["item_id_list"][i, : rows["item_length"][i]].tolist() for i in pick]
    long = [int(i) for i in np.random.default_rng(1).integers(1, n_items, max_len + 25)]
    return [*seqs, [], [0, n_items + 5, 7], long]  # an empty history, invalid ids, one beyond the window


def assert_same_ranking(torch_rt, history, got, want, edit) -> None:
    """Same ids in the same order; where they differ, torch scores ONNX's item as it scores its own (a tie)."""
    assert len(got[0]) == len(want[0])
    assert got[1] == pytest.approx(want[1], abs=TIE)
    if got[0] != want[0]:
        scores = torch_rt.scores(history, edit)
        assert all(abs(float(scores[g]) - w) <= TIE for g, w in zip(got[0], want[1])), (got, want)


def test_base_rankings_with_exclusions_are_the_torch_runtimes(setup):
    torch_rt, onnx_rt, _, histories, _ = setup
    for history in histories:
        exclude = {i for i in history if 0 < i < torch_rt.n_items}
        want = torch_rt.rank(history, K, exclude)
        got = onnx_rt.rank(history, K, exclude)
        assert_same_ranking(torch_rt, history, got, want, None)
        assert not set(got[0]) & exclude
    wide = torch_rt.rank(histories[0], 500), onnx_rt.rank(histories[0], 500)  # beyond the graph's top-100
    assert_same_ranking(torch_rt, histories[0], wide[1], wide[0], None)


@pytest.mark.parametrize("encoding", ["json", "fp16", "code"])
def test_received_edits_decode_and_rank_as_on_the_torch_runtime(setup, encoding):
    torch_rt, onnx_rt, editor, histories, _ = setup
    changed = 0
    for history in histories[:40]:
        payload = editor.edit(history, encoding, "v1").model_dump_json()  # the wire
        want_edit = torch_rt.decode_edit(EditPayload.model_validate_json(payload))
        got_edit = onnx_rt.decode_edit(json.loads(payload))
        for w, g in zip(want_edit.dW + want_edit.db, got_edit.dW + got_edit.db):
            assert np.allclose(w.numpy(), g, atol=1e-6)
        want = torch_rt.rank(history, K, None, want_edit)
        assert_same_ranking(torch_rt, history, onnx_rt.rank(history, K, None, got_edit), want, want_edit)
        changed += want[0] != torch_rt.rank(history, K)[0]
    assert changed > 5  # the edits move the rankings


def _serve_alone(rt, histories):
    """What the device serves without its cloud: state → nearest prototype → OOD flag → gated edit → top-k."""
    states = rt.user_states(histories)
    protos, _ = rt.assign_batch(states)
    far = rt.ood_flags(states, protos)
    edits = [rt.prototype_edit(None if f else p) for p, f in zip(protos, far)]
    return protos, far, edits, rt.rank_states(states, edits, [K] * len(histories), [None] * len(histories))


@pytest.mark.parametrize("gate", [True, False])
def test_prototype_assignment_the_ood_flag_and_the_cache_gate_are_the_torch_runtimes(setup, gate):
    torch_rt, onnx_rt, _, histories, root = setup
    snap = json.loads((root / "prototypes.json").read_text())
    (root / "gated.json").write_text(json.dumps({**snap, "cache_ok": [gate] * len(snap["signatures"])}))
    torch_rt.set_prototypes(PrototypeSnapshot.load(root / "gated.json"))
    onnx_rt.set_prototypes(Snapshot.load(root / "gated.json"))
    protos, far, edits, want = _serve_alone(torch_rt, histories)
    got_protos, got_far, got_edits, got = _serve_alone(onnx_rt, histories)
    assert got_protos == protos and got_far == far
    assert any(far) and not all(far)  # both sides of the OOD threshold
    assert [e is None for e in got_edits] == [e is None for e in edits] == [f or not gate for f in far]
    for history, edit, g, w in zip(histories, edits, got, want):
        assert_same_ranking(torch_rt, history, g, w, edit)


def test_a_code_edit_needs_the_cached_bank_of_its_version(setup):
    _, onnx_rt, editor, histories, _ = setup
    payload = json.loads(editor.edit(histories[0], "code", "v1").model_dump_json())
    with pytest.raises(ValueError, match="cached bank is v1"):
        onnx_rt.decode_edit({**payload, "version": "v2"})
    assert onnx_rt.edit_encoding_ready == "v1"
    with pytest.raises(ValueError, match="prototype dim 3 != model dim 64"):
        onnx_rt.set_prototypes(Snapshot.from_dict({"version": "x", "dim": 3, "signatures": [[0.0, 0.0, 0.0]]}))


def test_an_item_delta_in_the_bank_ranks_as_on_the_torch_runtime(setup):
    """The cloud's item rows (fitted toward a teacher that favours items 1-50), fetched in the snapshot: both
    runtimes score with table + delta, and the OOD flag reads the same scores."""
    torch_rt, onnx_rt, _, histories, root = setup
    model = torch_rt.model
    with torch.no_grad():
        states = torch_rt.user_states(histories[:100])
        logits = model.logits(model.head(states))
        logits[:, 1:51] += 2.0
    delta = fit_item_delta(model, states, torch.log_softmax(logits, -1), ItemDeltaConfig(rows=64, steps=50, lr=0.05))
    snap = json.loads((root / "prototypes.json").read_text())
    (root / "delta.json").write_text(json.dumps({**snap, "version": "v1-items",
                                                 "item_delta": ItemTableDelta.of(delta.ids, delta.rows).model_dump()}))
    plain = [torch_rt.rank(h, K) for h in histories]
    torch_rt.set_prototypes(PrototypeSnapshot.load(root / "delta.json"))
    onnx_rt.set_prototypes(Snapshot.load(root / "delta.json"))
    protos, far, edits, want = _serve_alone(torch_rt, histories)
    got_protos, got_far, _, got = _serve_alone(onnx_rt, histories)
    assert got_protos == protos and got_far == far
    for history, edit, g, w in zip(histories, edits, got, want):
        assert_same_ranking(torch_rt, history, g, w, edit)
    moved = sum(torch_rt.rank(h, K)[0] != p[0] for h, p in zip(histories, plain))
    assert moved > len(histories) // 4  # the delta changes what is ranked
    for rt, snapshot in ((torch_rt, PrototypeSnapshot.load), (onnx_rt, Snapshot.load)):
        rt.set_prototypes(snapshot(root / "prototypes.json"))  # the module's other tests keep the plain bank
