"""LLM item knowledge in the device model: side file, whitening, side views, new-item scores."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from recsys.checkpoint import export_for_device, load_checkpoint, save_checkpoint
from recsys.config import ModelConfig
from recsys.item_side import ItemSideError, load_item_side, save_item_side, whiten
from recsys.models import MODELS, EditableSeqRec, score_with_edit
from recsys.train import make_windows, next_item_loss

N_ITEMS, DIM = 40, 16


def _side_file(tmp_path, seed=0, d=24):
    rng = np.random.default_rng(seed)
    tokens = [f"i{k}" for k in range(1, N_ITEMS)]
    vectors = rng.normal(size=(len(tokens), d)).astype(np.float32) + 3.0  # anisotropic: a common offset
    codes = rng.integers(0, 8, size=(len(tokens), 2))
    path = save_item_side(tmp_path / "item_side.npz", tokens, vectors, codes)
    item_tokens = np.array(["[PAD]", *tokens])
    counts = np.ones(N_ITEMS)
    counts[0] = 0
    counts[-3:] = 0  # three items never seen in training
    return path, item_tokens, counts, vectors, codes


def test_whiten_centres_and_scales_on_the_fit_rows_only():
    x = np.random.default_rng(0).normal(size=(200, 10)) * np.arange(1, 11) + 5
    fit = np.arange(150)
    w = whiten(x, fit, 4)
    assert w.shape == (200, 4)
    assert np.allclose(w[fit].mean(0), 0, atol=1e-5) and np.allclose(w[fit].std(0, ddof=1), 1, atol=1e-4)


def test_load_item_side_aligns_rows_and_marks_unseen_items(tmp_path):
    path, tokens, counts, _, codes = _side_file(tmp_path)
    side = load_item_side(path, tokens[[0, 5, 1, 2, *range(3, 5), *range(6, N_ITEMS)]], counts, dims=8)
    assert side.vectors.shape == (N_ITEMS, 8) and side.vectors[0].abs().sum() == 0
    assert side.codes[1].tolist() == (codes[4] + 1).tolist()  # internal id 1 is token i5 (row 4)
    assert not side.seen[0] and not side.seen[-3:].any() and side.seen[1:-3].all()
    with pytest.raises(ItemSideError, match="run `persona codebook`"):
        load_item_side(tmp_path / "missing.npz", tokens, counts, 8)
    with pytest.raises(ItemSideError, match="another dataset"):
        load_item_side(path, np.array(["[PAD]", *[f"x{k}" for k in range(N_ITEMS - 1)]]), counts, 8)


def _model(name, kind, side, seed=0, **params):
    torch.manual_seed(seed)
    m = ModelConfig(hidden_size=DIM, inner_size=32, item_side=kind, side_dims=8, **params)
    return EditableSeqRec(name, m, N_ITEMS, 10, side)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("kind", ["fused", "codes", "init"])
def test_side_views_train_and_survive_a_checkpoint(tmp_path, name, kind):
    path, tokens, counts, _, _ = _side_file(tmp_path)
    model = _model(name, kind, load_item_side(path, tokens, counts, 8))
    x, y = make_windows([torch.randint(1, N_ITEMS, (n,)).numpy() for n in (6, 12, 4)], 10)
    next_item_loss(model, x, y).backward()
    trained = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    if kind == "fused":
        assert id(model.side.proj.weight) in trained
    if kind == "codes":
        assert id(model.side.code_embs[0].weight) in trained
    seq = torch.randint(1, N_ITEMS, (3, 10))
    length = torch.tensor([10, 4, 1])
    before = score_with_edit(model, seq, length)
    loaded, meta, _ = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model, "toy", tokens))
    assert meta.model_params.item_side == kind
    assert torch.equal(score_with_edit(loaded, seq, length), before)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("kind", ["fused", "codes"])
def test_the_device_export_folds_the_side_views_into_the_item_table(tmp_path, name, kind):
    """``persona export``: an ID-only checkpoint whose item table is the side-view model's inference table —
    the same user states and scores (new items included), a smaller ``model.pt``, no side buffers."""
    path, tokens, counts, _, _ = _side_file(tmp_path)
    model = _model(name, kind, load_item_side(path, tokens, counts, 8))
    x, y = make_windows([torch.randint(1, N_ITEMS, (n,)).numpy() for n in (6, 12, 4)], 10)
    next_item_loss(model, x, y).backward()  # (a step, so the trained and folded tables are not the init's)
    with torch.no_grad():
        for prm in model.parameters():
            if prm.grad is not None:
                prm -= 0.1 * prm.grad
    src = save_checkpoint(tmp_path / "ckpt", model, "toy", tokens)
    out = export_for_device(src, tmp_path / "device")
    folded, meta, got_tokens = load_checkpoint(out)
    assert meta.model_params.item_side == "none" and meta.extra["folded_from"] == kind and folded.side is None
    assert list(got_tokens) == list(tokens) and not any(k.startswith("side.") for k in folded.state_dict())
    seq = torch.randint(1, N_ITEMS, (3, 10))
    length = torch.tensor([10, 4, 1])
    assert torch.allclose(score_with_edit(folded, seq, length), score_with_edit(model, seq, length), atol=1e-5)
    assert (out / "model.pt").stat().st_size < (src / "model.pt").stat().st_size
    again = export_for_device(out, tmp_path / "again")  # an ID-only checkpoint exports as it is
    assert "folded_from" in load_checkpoint(again)[1].extra


@pytest.mark.parametrize("kind", ["fused", "codes"])
def test_a_new_items_score_depends_on_its_text_and_not_on_its_untrained_id(tmp_path, kind):
    path, tokens, counts, vectors, codes = _side_file(tmp_path)
    new = N_ITEMS - 1  # an item without training interactions
    seq, length = torch.randint(1, N_ITEMS - 3, (2, 10)), torch.tensor([10, 6])
    model = _model("sasrec", kind, load_item_side(path, tokens, counts, 8))
    base = score_with_edit(model, seq, length)[:, new]
    with torch.no_grad():
        model.encoder.item_embedding.weight[new] += 5.0  # its ID embedding plays no part
    assert torch.equal(score_with_edit(model, seq, length)[:, new], base)
    other_text = vectors.copy()
    other_codes = codes.copy()
    other_text[new - 1] = -other_text[new - 1]  # another text (and its semantic ID) for the same item
    other_codes[new - 1] = (codes[new - 1] + 3) % 8
    path2 = save_item_side(tmp_path / "other.npz", list(tokens[1:]), other_text, other_codes)
    changed = _model("sasrec", kind, load_item_side(path2, tokens, counts, 8))
    changed.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("side.")}, strict=False)
    assert not torch.allclose(score_with_edit(changed, seq, length)[:, new], base)


@pytest.mark.parametrize("unseen_negatives", [True, False])
def test_unseen_items_leave_the_training_softmax_when_asked(tmp_path, unseen_negatives):
    """``unseen_negatives=False``: items with no training interaction are not negatives of the training loss,
    so their side vectors get no gradient (with True they do: a full softmax pushes them down)."""
    path, tokens, counts, _, _ = _side_file(tmp_path)
    model = _model("sasrec", "fused", load_item_side(path, tokens, counts, 8), unseen_negatives=unseen_negatives)
    model.side.vectors.requires_grad_(True)
    x, y = make_windows([torch.randint(1, N_ITEMS - 3, (n,)).numpy() for n in (6, 12, 4)], 10)  # seen items only
    loss = next_item_loss(model, x, y)
    loss.backward()
    unseen_grad = float(model.side.vectors.grad[-3:].abs().sum())
    assert (unseen_grad > 0) == unseen_negatives
    assert float(model.side.vectors.grad[1:-3].abs().sum()) > 0 and torch.isfinite(loss)


def test_id_only_new_item_score_ignores_text(tmp_path):
    """ID-only (``none``): the model holds no side data, so a new item's score cannot depend on its text."""
    path, tokens, counts, _, _ = _side_file(tmp_path)
    model = _model("sasrec", "none", load_item_side(path, tokens, counts, 8))
    assert model.side is None and not any(k.startswith("side.") for k in model.state_dict())


def test_cached_inference_table_follows_weight_updates(tmp_path):
    path, tokens, counts, _, _ = _side_file(tmp_path)
    model = _model("gru4rec", "fused", load_item_side(path, tokens, counts, 8)).eval()
    seq, length = torch.randint(1, N_ITEMS, (2, 10)), torch.tensor([10, 3])
    a = score_with_edit(model, seq, length)
    with torch.no_grad():
        model.side.proj.weight.mul_(2.0)
    assert not torch.allclose(score_with_edit(model, seq, length), a)


def test_recsys_and_codebook_import_nothing_above_them():
    code = (
        "import sys, recsys.train, recsys.runtime, recsys.item_side, recsys.experiment, codebook;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('llm_cloud', 'serving')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
