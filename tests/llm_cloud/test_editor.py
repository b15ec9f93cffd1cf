"""The served edit: one function behind the cloud's ``AdapterEditor`` and the ``served`` evaluation method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_cloud.adapter import edited_logits, left_padded_windows
from llm_cloud.adapter_config import PrototypeConfig
from llm_cloud.editor import AdapterEditor, served_edit
from llm_cloud.prototype_build import fit_cache_gain
from llm_cloud.prototype_online import spawn
from llm_cloud.prototypes import cache_ok, clipped_parts, is_ood, ood_scores
from recsys import metrics, ood
from recsys.runtime import DeviceRuntime
from recsys.wire import EditPayload, PrototypeSnapshot
from tests.llm_cloud.test_adapter import N_ITEMS, _bank


def _histories(b=6, n=10):
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(1, N_ITEMS, (b, n), generator=g)
    length = torch.tensor([10, 7, 1, 4, 10, 2])
    seq[torch.arange(n).view(1, -1) >= length.view(-1, 1)] = 0
    return seq, length


def _row_logits(base, seq, length, edit):
    return edited_logits(base, base.user_state(seq, length), edit)


def test_served_batch_equals_what_the_service_sends_each_device():
    bank, adapter, _, base = _bank(PrototypeConfig(k=3, variant="centre"))
    seq, length = _histories()
    d = served_edit(base, adapter, bank, None, seq, length).ood_score.sort().values
    bank.ood_threshold = float(d[2] + d[3]) / 2  # some rows in distribution, some not (no row at the edge)
    out = served_edit(base, adapter, bank, None, seq, length)
    edit, proto, ood = out.edit, out.prototype, out.ood_score > bank.ood_threshold
    assert ood.any() and (~ood).any() and proto[ood].eq(-1).all() and proto[~ood].ge(0).all()
    batch = _row_logits(base, seq, length, edit)
    editor = AdapterEditor(base, adapter, bank, None, "v")
    for i in range(len(seq)):
        payload = editor.edit(seq[i, : length[i]].tolist())
        assert payload.prototype_id == (None if ood[i] else int(proto[i]))
        served = _row_logits(base, seq[i : i + 1], length[i : i + 1], payload.head_edit())
        assert torch.allclose(served[0], batch[i], atol=1e-5)


def test_out_of_distribution_rows_get_their_own_edit_the_rest_prototype_plus_residual():
    bank, adapter, _, base = _bank(PrototypeConfig(k=3, variant="centre"))
    seq, length = _histories()
    bank.ood_threshold = float("inf")
    out = served_edit(base, adapter, bank, None, seq, length)
    edit, proto = out.edit, out.prototype
    assert proto.ge(0).all()
    window = left_padded_windows(seq, length, adapter.cfg.window)
    codes = adapter.layer_codes(adapter.sequence_code(window, None, base.user_state(seq, length)))
    sample = adapter.edits_from_codes(codes, base)
    centre = adapter.edits_from_codes(bank.centres[proto].view_as(codes), base)
    expected = bank.edit_for(proto, sample, centre)
    assert all(torch.equal(a, b) for a, b in zip(edit.dW + edit.db, expected.dW + expected.db))

    bank.ood_threshold = float("-inf")  # every row out of distribution: the window's own clipped edit
    out = served_edit(base, adapter, bank, None, seq, length)
    edit, proto = out.edit, out.prototype
    assert proto.eq(-1).all()
    own = clipped_parts(sample, adapter.cfg.clip)
    assert all(torch.equal(a, b) for a, b in zip(edit.dW + edit.db, own))


def test_the_proto_options_serve_e_k_alone_keep_it_out_of_distribution_and_report_the_assigned_distance():
    """The ``proto*`` methods through the one served edit: ``residual=False`` is ``E_k`` alone,
    ``ood_override=False`` keeps it for out-of-distribution windows, ``distance="assigned"`` measures to the
    prototype the window was assigned (min-residual) instead of the nearest centre."""
    bank, adapter, _, base = _bank(PrototypeConfig(k=3, variant="centre", assignment="min-residual"))
    seq, length = _histories()
    bank.ood_threshold = float("-inf")  # every row out of distribution
    out = served_edit(base, adapter, bank, None, seq, length, residual=False, ood_override=False,
                      distance="assigned")  # fmt: skip
    assert torch.equal(out.prototype, out.assigned)  # no row fell back to its own edit
    expected = bank.edit_for(out.assigned, None, None)
    assert all(torch.equal(a, b) for a, b in zip(out.edit.dW + out.edit.db, expected.dW + expected.db))
    flat = out.codes.flatten(1)
    assert torch.allclose(out.distance, (flat - bank.centres[out.assigned]).norm(dim=1))
    nearest = served_edit(base, adapter, bank, None, seq, length)
    assert torch.equal(nearest.distance, bank.assign_nearest(flat)[1]) and nearest.prototype.eq(-1).all()
    assert torch.equal(nearest.assigned, out.assigned) and (out.distance >= nearest.distance - 1e-5).all()
    assert (out.distance > nearest.distance + 1e-3).any()  # a window whose min-residual prototype is not nearest


def _device(base, editor):
    runtime = DeviceRuntime(base, np.array(["[PAD]"] + [str(i) for i in range(1, N_ITEMS)]))
    runtime.set_prototypes(PrototypeSnapshot.model_validate_json(editor.snapshot().model_dump_json()))
    return runtime


def test_every_wire_encoding_decodes_on_the_device_to_the_served_edit():
    bank, adapter, _, base = _bank(PrototypeConfig(k=3, variant="finetune", finetune_epochs=2))
    seq, length = _histories()
    d = served_edit(base, adapter, bank, None, seq, length).ood_score.sort().values
    bank.ood_threshold = float(d[2] + d[3]) / 2  # both branches: prototype + residual, and own edit
    editor = AdapterEditor(base, adapter, bank, None, "v")
    device = _device(base, editor)
    assert device.edit_encoding_ready == "v"
    sizes = {}
    for i in range(len(seq)):
        history = seq[i, : length[i]].tolist()
        dense = editor.edit(history).head_edit()
        for encoding, atol in (("code", 1e-6), ("fp32", 0.0), ("fp16", 2.0**-11)):
            payload = EditPayload.model_validate_json(editor.edit(history, encoding, "v").model_dump_json())
            assert payload.encoding == encoding
            got = device.decode_edit(payload)
            err = max(float((a - b).abs().max()) for a, b in zip(got.dW + got.db, dense.dW + dense.db))
            assert err <= atol, (encoding, err)
            sizes[encoding] = len(payload.model_dump_json())
    sizes["json"] = len(editor.edit(seq[0, : length[0]].tolist()).model_dump_json())
    assert sizes["code"] < sizes["fp16"] < sizes["fp32"] < sizes["json"]
    # a device caching another bank version gets a dense edit, never a code it cannot decode
    assert editor.edit(seq[0].tolist(), "code", "old").encoding == "fp32"


def test_code_edit_of_another_bank_version_is_refused_by_the_device():
    bank, adapter, _, base = _bank(PrototypeConfig(k=3, variant="centre"))
    device = _device(base, AdapterEditor(base, adapter, bank, None, "v1"))
    payload = AdapterEditor(base, adapter, bank, None, "v2").edit([1, 2, 3], "code", "v2")
    with pytest.raises(ValueError, match="cached bank is v1"):
        device.decode_edit(payload)


def test_the_ood_score_reaches_the_device_which_flags_what_the_cloud_flags():
    bank, adapter, samples, base = _bank(PrototypeConfig(k=3, variant="centre", ood_quantile=0.9))
    editor = AdapterEditor(base, adapter, bank, None, "v")
    device = _device(base, editor)
    score = device.prototypes.ood
    assert score is not None and score.threshold == pytest.approx(bank.ood_threshold)
    assert len(score.proto_logodds) == bank.size and score.w_entropy != 0
    protos, _ = device.assign_batch(samples.state)
    flags = device.ood_flags(samples.state, protos)
    assert 0.03 < np.mean(flags) < 0.2  # ≈ 10 % of the calibration rows lie beyond the 0.9 quantile
    _, cloud_score, _ = ood_scores(bank, base, samples.state)
    assert flags == is_ood(bank, cloud_score).tolist()  # the device's test is the cloud's, row for row
    # the score follows the base model's entropy: a sharper (or flatter) softmax moves it by w_entropy
    with torch.no_grad():
        ent = ood.entropy(base.logits(base.head(samples.state, None)))
    k = bank.nearest_signature(samples.state)
    assert torch.allclose(cloud_score, score.score(ent, k), atol=1e-4)
    old = editor.snapshot().model_dump(exclude={"ood"}) | {"ood_threshold": 1.5}  # a cache from before the score
    assert PrototypeSnapshot.model_validate(old).ood is None
    with pytest.raises(ValueError, match="OOD score for 3 prototypes, bank has 2"):
        snap = editor.snapshot().model_copy(deep=True)
        snap.signatures, snap.edits = snap.signatures[:2], snap.edits[:2]
        device.set_prototypes(snap)


def test_a_dynamic_cloud_learns_what_served_dyn_learns_and_publishes_it():
    """``dynamic``: the live bank absorbs each answered window (refine / spawn) and counts each history's newest
    item once (from the state before it) — the updates of the offline ``served-dyn`` — while answers come from
    the published bank, which the live one replaces every ``publish_every`` answers under a new version."""
    from llm_cloud.editor import absorb, count_outcomes, edit_decoder

    bank, adapter, _, base = _bank(PrototypeConfig(k=3, max_k=5, variant="centre", ood_quantile=0.5))
    loaded = bank.copy()
    editor = AdapterEditor(base, adapter, bank, None, "v", dynamic=True, publish_every=4, keep=2)
    reference, published = bank.copy(), bank.copy()  # what the cloud must hold, and what it must answer with
    g = torch.Generator().manual_seed(7)
    users = [torch.randint(1, N_ITEMS, (n,), generator=g).tolist() for n in (6, 9, 3)]
    answered = 0
    for n in range(1, 10):  # the devices ask as their histories grow, interleaved
        for items in users:
            if n > len(items):
                continue
            if n >= 2:
                seq, length = torch.tensor([items[: n - 1]]), torch.tensor([n - 1])
                count_outcomes(base, reference, base.user_state(seq, length), torch.tensor([items[n - 1]]))
            seq, length = torch.tensor([items[:n]]), torch.tensor([n])
            want = served_edit(base, adapter, published, None, seq, length)
            got = editor.edit(items[:n]).head_edit()
            assert all(torch.allclose(a, b[0], atol=1e-6) for a, b in zip(got.dW + got.db, want.edit.dW + want.edit.db))
            absorb(reference, want)
            answered += 1
            if answered % 4 == 0:
                published = reference.copy()
    assert editor.outcomes == sum(len(items) - 1 for items in users)
    assert editor.published == answered // 4 and editor.version == f"v+{answered // 4}"
    assert torch.equal(editor.live.miss, reference.miss) and torch.equal(editor.live.seen, reference.seen)
    assert torch.allclose(editor.live.signatures, reference.signatures) and editor.live.size == reference.size
    assert editor.live.size > loaded.size  # out-of-distribution windows opened prototypes
    assert torch.equal(bank.signatures, loaded.signatures) and torch.equal(bank.miss, loaded.miss)  # loaded: as built
    snap = editor.snapshot()
    assert snap.version == editor.version and snap.size == editor.bank.size
    older = f"v+{editor.published - 1}"  # a device that has not refetched yet is answered with its own bank
    device = _device(base, editor)
    old_bank = editor._published[older]
    device.set_prototypes(PrototypeSnapshot.model_validate_json(
        old_bank.snapshot(edit_decoder(adapter, old_bank), older).model_dump_json()))  # as published then
    payload = editor.edit(users[1], "code", older)
    assert payload.version == older and payload.encoding == "code"
    want = served_edit(base, adapter, old_bank, None, torch.tensor([users[1]]),
                       torch.tensor([len(users[1])])).edit
    got = device.decode_edit(payload)
    assert all(torch.allclose(a, b[0], atol=1e-5) for a, b in zip(got.dW + got.db, want.dW + want.db))
    assert editor.edit(users[1], "code", "v").encoding == "fp32"  # a bank no longer kept (keep=2): the newest
    editor.edit(users[1])  # a retry with nothing new counts nothing
    assert editor.outcomes == sum(len(items) - 1 for items in users)
    frozen = AdapterEditor(base, adapter, bank, None, "v")
    frozen.edit(users[0])
    assert frozen.version == "v" and frozen.live is None


def _ndcg10(logits, target):
    return metrics.ndcg(metrics.target_rank(logits, target)).float()


def test_a_device_serves_a_cached_edit_alone_only_where_it_beat_the_base_head_on_held_out_rows():
    bank, adapter, samples, base = _bank(PrototypeConfig(k=3, variant="finetune", finetune_epochs=2))
    state, target = samples.state, samples.targets[:, 0]
    with torch.no_grad():
        for part in bank.weights + bank.biases:
            part[2] = 0.0  # prototype 2: no edit at all (no gain: the base head is as good)
        fit_cache_gain(bank, base, state, target)
        k, score, logits = ood_scores(bank, base, state)
        for p in range(bank.size):  # the gain is the mean NDCG@10 difference on the rows a device serves with p
            rows = (k == p) & ~is_ood(bank, score)
            edited = base.logits(base.head(state[rows], bank.prototype_edit(p)))
            want = float((_ndcg10(edited, target[rows]) - _ndcg10(logits[rows], target[rows])).mean())
            assert float(bank.cache_gain[p]) == pytest.approx(want, abs=1e-6)
    assert float(bank.cache_gain[2]) == 0.0 and cache_ok(bank) == (bank.cache_gain > 0).tolist()
    bank.cache_gain = torch.tensor([0.01, -0.02, 0.0])  # one edit that gained, one that lost, one level
    ok = cache_ok(bank)
    assert ok == [True, False, False]

    editor = AdapterEditor(base, adapter, bank, None, "v")
    device = _device(base, editor)
    assert device.prototypes.cache_ok == ok  # it travels in the snapshot (GET /v1/prototypes)
    for p in range(bank.size):
        edit = device.prototype_edit(p)
        assert (edit is not None) == ok[p]
    ungated = DeviceRuntime(base, device.item_tokens, cache_gate=False)  # serve.device.cache_gate=false: every edit
    ungated.set_prototypes(device.prototypes)
    assert all(ungated.prototype_edit(p) is not None for p in range(bank.size))
    older = PrototypeSnapshot.model_validate(editor.snapshot().model_dump(exclude={"cache_ok"}))  # before the gate
    device.set_prototypes(older)
    assert all(device.prototype_edit(p) is not None for p in range(bank.size))

    # kept with the bank; a spawned prototype has no held-out evidence; an older bank gates nothing
    copy = bank.copy()
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.cache_gain, bank.cache_gain)
    assert spawn(copy, copy.centres[0], [w[0] for w in copy.weights + copy.biases], copy.signatures[0]) == 3
    assert cache_ok(copy)[3] is False
    state_dict = {k: v for k, v in bank.state_dict().items() if k != "cache_gain"}
    copy.load_state_dict(state_dict)
    assert copy.cache_gain is None and cache_ok(copy) == [True] * bank.size
