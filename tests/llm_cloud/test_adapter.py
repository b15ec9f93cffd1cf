"""Adapter edits, the edit payload, and a tiny end-to-end run (adapter + bank through the artifacts); the tiny base,
adapter and bank the prototype tests share (``_bank``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_cloud.adapter import Adapter, left_padded_windows
from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
from llm_cloud.adapter_data import training_samples
from llm_cloud.prototype_build import build_bank
from llm_cloud.prototypes import PrototypeBank
from recsys.config import ModelConfig
from recsys.models import EditableSeqRec, HeadEdit, score_with_edit
from recsys.wire import EditPayload

D, L, N_ITEMS = 16, 2, 40


def _base(seed=0):
    torch.manual_seed(seed)
    m = ModelConfig(hidden_size=D, inner_size=32, head_layers=L, item_side="none")
    model = EditableSeqRec("sasrec", m, N_ITEMS, 10)
    for layer in model.head.layers:
        torch.nn.init.normal_(layer.weight, std=0.2)
    return model.eval()


def _inputs(b=4, n=5):
    g = torch.Generator().manual_seed(0)
    window = torch.randint(1, N_ITEMS, (b, n), generator=g)
    window[0, :3] = 0  # left padding
    codes = torch.randint(1, 5, (b, n, 3), generator=g) * (window > 0).unsqueeze(-1)
    return window, codes, torch.randn(b, D, generator=g)


@pytest.mark.parametrize("rank", [0, 3])
@pytest.mark.parametrize("cross_layer", [True, False])
def test_edit_shapes_and_clipping(rank, cross_layer):
    cfg = AdapterConfig(window=5, code_dim=8, rank=rank, cross_layer=cross_layer, clip=0.05)
    adapter = Adapter(cfg, N_ITEMS, D, L, code_sizes=[4, 4, 4])
    for p in adapter.parameters():  # leave the zero init so edits are non-trivial
        torch.nn.init.normal_(p, std=0.5)
    window, codes, state = _inputs()
    layer_codes, edit = adapter(window, codes, state)
    assert layer_codes.shape == (4, L, 8)
    assert [w.shape for w in edit.dW] == [(4, D, D)] * L and [b.shape for b in edit.db] == [(4, D)] * L
    if rank:
        assert torch.linalg.matrix_rank(edit.dW[0][0]) <= rank
    clipped = edit.clipped()
    assert max(float(w.abs().max()) for w in clipped.dW) <= 0.05 + 1e-7
    assert max(float(w.abs().max()) for w in edit.dW) > 0.05  # clipping did something


def test_untrained_adapter_is_the_zero_edit_identity():
    base = _base()
    adapter = Adapter(AdapterConfig(window=5, code_dim=8), N_ITEMS, D, L, code_sizes=[4, 4, 4])
    window, codes, _ = _inputs()
    seq = torch.randint(1, N_ITEMS, (4, 10))
    length = torch.full((4,), 10)
    state = base.user_state(seq, length).detach()
    _, edit = adapter(window, codes, state)
    assert torch.equal(score_with_edit(base, seq, length, edit), score_with_edit(base, seq, length))


def test_cross_layer_codes_depend_on_lower_layers():
    cfg = AdapterConfig(window=5, code_dim=8, cross_layer=True)
    adapter = Adapter(cfg, N_ITEMS, D, L)
    z = torch.randn(2, 8)
    codes = adapter.layer_codes(z)
    with torch.no_grad():  # layer 2's code changes when layer 1's cell changes
        adapter.layer_cells[0].weight_hh.add_(1.0)
        adapter.layer_cells[0].bias_ih.add_(1.0)
    assert not torch.allclose(adapter.layer_codes(z)[:, 1], codes[:, 1])


def test_left_padded_windows():
    seq = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 0, 0, 0, 0]])
    got = left_padded_windows(seq, torch.tensor([4, 2]), 3)
    assert got.tolist() == [[2, 3, 4], [0, 5, 6]]


def _bank(cfg: PrototypeConfig) -> tuple[PrototypeBank, Adapter, object, EditableSeqRec]:
    base = _base()
    adapter = Adapter(AdapterConfig(window=4, code_dim=8), N_ITEMS, D, L)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.3)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, N_ITEMS, (12,), generator=g).numpy() for _ in range(30)]
    samples = training_samples(base, seqs, n_window=4, n_future=1)
    with torch.enable_grad():
        calibration = (samples.state, samples.targets[:, 0])  # the OOD score's fit (held out in real runs)
        bank = build_bank(cfg, base, adapter, samples, None, seed=0, calibration=calibration)
    return bank, adapter, samples, base


def test_payload_round_trip_reproduces_the_edit():
    base = _base()
    edit = HeadEdit([torch.randn(D, D) * 0.1 for _ in range(L)], [torch.randn(D) * 0.1 for _ in range(L)], clip=0.2)
    payload = EditPayload.from_head_edit(edit, "v1", prototype_id=3)
    back = EditPayload.model_validate_json(payload.model_dump_json()).head_edit()
    seq = torch.randint(1, N_ITEMS, (1, 10))
    length = torch.tensor([10])
    assert torch.allclose(score_with_edit(base, seq, length, back), score_with_edit(base, seq, length, edit))


def test_adapter_editor_round_trip_through_artifacts(tmp_path):
    from llm_cloud.artifacts import save_adapter, save_bank
    from llm_cloud.editor import AdapterEditor, BaseEditor, load_editor
    from recsys.checkpoint import save_checkpoint
    from recsys.runtime import DeviceRuntime

    bank, adapter, samples, base = _bank(PrototypeConfig(k=3, variant="centre"))
    ckpt = save_checkpoint(tmp_path / "seed0", base, "toy", np.array(["[PAD]"] + [str(i) for i in range(1, N_ITEMS)]))
    assert isinstance(load_editor(ckpt, D, ckpt / "adapter-main"), BaseEditor)  # nothing trained yet
    save_adapter(ckpt / "adapter-main", adapter, {"seed": 0})
    save_bank(ckpt / "bank-centre", bank)
    editor = load_editor(ckpt, D, ckpt / "adapter-main")
    assert isinstance(editor, AdapterEditor) and editor.version.startswith("persona-")
    history = [3, 7, 9, 11, 2]
    payload = editor.edit(history)
    assert len(payload.layers) == L and (payload.prototype_id is None or 0 <= payload.prototype_id < bank.size)
    runtime = DeviceRuntime.load(ckpt)
    edited, _ = runtime.rank(history, 5, edit=payload.head_edit())
    assert edited and editor.snapshot().version == editor.version and len(editor.snapshot().signatures) == 3
