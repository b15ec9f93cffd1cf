"""User-context codebook hits: one function in training, evaluation and the cloud editor; they reach the edit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codebook import CodebookConfig, SemanticCodebook
from llm_cloud.adapter import Adapter, left_padded_windows
from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
from llm_cloud.adapter_data import batch_from_rows, training_samples
from llm_cloud.artifacts import load_adapter, load_user_context, save_adapter
from llm_cloud.context_hits import UserContextHits
from llm_cloud.editor import AdapterEditor, served_edit
from llm_cloud.prototype_build import build_bank
from tests.llm_cloud.test_adapter import N_ITEMS, D, L, _base

TOKENS = np.array(["[PAD]"] + [f"i{i}" for i in range(1, N_ITEMS)])


@pytest.fixture(scope="module")
def context() -> UserContextHits:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(N_ITEMS - 2, 12)).astype(np.float32)  # the codebook lacks the last item
    ids = [f"i{i}" for i in range(1, N_ITEMS - 1)][::-1]  # codebook rows in another order than internal ids
    book = SemanticCodebook.build(emb, CodebookConfig(levels=2, max_levels=2, bits=3), item_ids=ids)
    return UserContextHits.from_codebook(book, emb, TOKENS, n_recent=3)


def _adapter(context, **cfg) -> Adapter:
    adapter = Adapter(AdapterConfig(window=5, code_dim=8, **cfg), N_ITEMS, D, L, context_sizes=context.level_sizes)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return adapter.eval()


def _windows():
    g = torch.Generator().manual_seed(2)
    window = torch.randint(1, N_ITEMS - 1, (6, 5), generator=g)
    window[0, :3] = 0  # left padding
    window[1] = 0  # empty window
    window[2, -1] = N_ITEMS - 1  # an item the codebook lacks contributes nothing
    return window


def test_hits_equal_semantic_codebook_hits_of_the_mean_recent_item_embedding(context):
    window = _windows()
    hits = context(window)
    row = {item: i for i, item in enumerate(context.book.item_ids)}
    emb = context.item_emb.numpy()
    assert hits[1].eq(0).all()  # nothing known: no hit
    for i in (0, 2, 3, 4, 5):
        known = [int(t) for t in window[i, -3:] if 0 < int(t) and TOKENS[int(t)] in row]
        mean = np.mean([emb[t] for t in known], axis=0)
        expected = context.book.hits((mean / np.linalg.norm(mean))[None])[0] + 1
        assert hits[i].tolist() == expected.tolist()
    assert not torch.equal(hits[0], hits[3])  # the hits differ between windows (the fixture is not degenerate)


def test_context_hits_reach_the_edit_and_the_ablation_removes_them(context):
    window, state = _windows(), torch.randn(6, D)
    hits = context(window)
    other = hits.roll(1, dims=0)
    other[1] = hits[0]  # every row gets different hits
    for cfg in ({"use_context": True}, {"use_context": True, "semantic_main": True}):
        adapter = _adapter(context, **cfg)
        _, e1 = adapter(window, None, state, context=hits)
        _, e2 = adapter(window, None, state, context=other)
        diff = (e1.dW[0] - e2.dW[0]).flatten(1).abs().amax(1)
        assert bool((diff[hits.ne(other).any(1)] > 1e-6).all()), cfg
    plain = _adapter(context, use_context=False)
    assert plain.context_sizes == [] and not any("context" in k for k in plain.state_dict())
    _, e1 = plain(window, None, state, context=hits)
    _, e2 = plain(window, None, state, context=other)
    assert all(torch.equal(a, b) for a, b in zip(e1.dW + e1.db, e2.dW + e2.db))
    with pytest.raises(ValueError, match="context"):
        _adapter(context, use_context=True)(window, None, state)  # a context adapter refuses to run without


def test_training_evaluation_and_editor_compute_the_same_hits(context, tmp_path):
    base = _base()
    adapter = _adapter(context, use_context=True)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(1, N_ITEMS, (12,), generator=g).numpy() for _ in range(20)]
    samples = training_samples(base, seqs, n_window=5, n_future=1)
    idx = torch.arange(len(samples))
    assert torch.equal(samples.batch(idx, None, context).context, context(samples.window))

    seq = torch.randint(1, N_ITEMS, (4, 10), generator=g)
    length = torch.tensor([10, 6, 2, 9])
    seq[torch.arange(10).view(1, -1) >= length.view(-1, 1)] = 0
    rows = {"item_id_list": seq, "item_length": length}
    b = batch_from_rows(base, rows, 5, None, context)
    assert torch.equal(b.context, context(left_padded_windows(seq, length, 5)))

    with torch.enable_grad():
        bank = build_bank(PrototypeConfig(k=2, variant="centre"), base, adapter, samples, None, 0, context)
    bank.ood_threshold = float("inf")
    save_adapter(tmp_path / "adapter-main", adapter, {"seed": 0}, None, context)
    loaded, info = load_adapter(tmp_path / "adapter-main")
    saved_ctx = load_user_context(tmp_path / "adapter-main")
    assert info["config"]["use_context"] and info["context_sizes"] == context.level_sizes
    assert torch.equal(saved_ctx(b.window), b.context)
    editor = AdapterEditor(base, loaded, bank, None, "v", saved_ctx)
    batch = served_edit(base, adapter, bank, None, seq, length, context)
    for i in range(len(seq)):
        payload = editor.edit(seq[i, : length[i]].tolist())
        got, want = payload.head_edit().clipped(), batch.edit.clipped()
        assert all(torch.allclose(a, b[i], atol=1e-5) for a, b in zip(got.dW + got.db, want.dW + want.db))
    with pytest.raises(ValueError, match="context"):
        AdapterEditor(base, loaded, bank, None, "v")


def test_adapter_saved_before_user_context_still_loads(tmp_path):
    import yaml

    adapter = Adapter(AdapterConfig(window=5, code_dim=8), N_ITEMS, D, L)
    save_adapter(tmp_path, adapter, {"seed": 0})
    info = yaml.safe_load((tmp_path / "adapter.yaml").read_text())
    for key in ("use_context", "context_items", "semantic_main"):  # what an old adapter.yaml lacks
        del info["config"][key]
    del info["context_sizes"]
    (tmp_path / "adapter.yaml").write_text(yaml.safe_dump(info))
    loaded, _ = load_adapter(tmp_path)
    assert not loaded.cfg.use_context and loaded.context_sizes == [] and load_user_context(tmp_path) is None
    window, state = _windows(), torch.randn(6, D)
    assert torch.equal(loaded(window, None, state)[0], adapter(window, None, state)[0])
