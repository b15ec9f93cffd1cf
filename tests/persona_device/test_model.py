"""The exported graphs on onnxruntime: inputs and outputs as documented, the state at any padded width, exclusions,
the entropy the OOD score reads, and refusals of an incomplete or foreign export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from persona_device.model import META_FILE, OnnxModel
from recsys import ood
from tests.device_models import trained


@pytest.fixture(scope="module")
def setup(ml100k_split, tmp_path_factory):
    t = trained("sasrec", ml100k_split, tmp_path_factory.mktemp("onnx-model"))
    return t, OnnxModel(t.export_dir)


def _rows(n_items: int, width: int, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(0).integers(1, n_items, (len(lengths), width))
    ids[np.arange(width)[None, :] >= np.asarray(lengths)[:, None]] = 0
    return ids, np.asarray(lengths)


def test_the_state_does_not_depend_on_the_padding_width(setup):
    t, onnx = setup
    ids, lengths = _rows(onnx.meta.n_items, onnx.meta.max_seq_len, [3, 9, 1])
    full = onnx.user_states(ids, lengths)
    assert np.allclose(onnx.user_states(ids[:, :9], lengths), full, atol=1e-5)
    with torch.no_grad():
        want = t.model.user_state(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
    assert full.shape == (3, onnx.meta.dim) and np.allclose(full, want, atol=1e-5)


def test_the_ranker_excludes_items_and_reports_the_base_entropy(setup):
    t, onnx = setup
    ids, lengths = _rows(onnx.meta.n_items, 12, [12, 4])
    states = onnx.user_states(ids, lengths)
    exclude = np.zeros((2, onnx.meta.n_items), bool)
    exclude[0, ids[0]] = True
    out = onnx.rank(states, *onnx.no_edit(2), exclude)
    assert out.top_ids.shape == out.top_scores.shape == (2, onnx.meta.top_k) == (2, 100)
    assert np.isneginf(out.scores[:, 0]).all() and np.isneginf(out.scores[0, ids[0]]).all()
    assert not set(out.top_ids[0].tolist()) & set(ids[0].tolist())
    with torch.no_grad():
        logits = t.model.logits(t.model.head(torch.from_numpy(states)))
    assert np.allclose(out.entropy, ood.entropy(logits).numpy(), atol=1e-4)  # before exclusions


def test_an_incomplete_or_foreign_export_is_refused(setup, tmp_path):
    t, _ = setup
    copy = tmp_path / "copy"
    shutil.copytree(t.export_dir, copy)
    meta = json.loads((copy / META_FILE).read_text())
    (copy / META_FILE).write_text(json.dumps({**meta, "format": "persona-onnx/0"}))
    with pytest.raises(ValueError, match="this runtime reads 'persona-onnx/1'"):
        OnnxModel(copy)
    (copy / META_FILE).write_text(json.dumps({**meta, "n_items": meta["n_items"] + 1}))
    with pytest.raises(ValueError, match="do not match"):
        OnnxModel(copy)
    (copy / META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="device.json missing"):
        OnnxModel(copy)
