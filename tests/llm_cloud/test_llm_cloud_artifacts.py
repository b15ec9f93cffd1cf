"""llm_cloud.artifacts: adapter and prototype bank round trips on disk, the semantic-code table of a saved codebook,
and the errors that say what to run first."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from codebook import CodebookConfig, SemanticCodebook
from llm_cloud.adapter import Adapter
from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
from llm_cloud.artifacts import (
    ArtifactError,
    code_table_for,
    freeze,
    load_adapter,
    load_bank,
    load_code_table,
    save_adapter,
    save_bank,
    user_context_for,
)
from recsys import run_layout
from tests.llm_cloud.test_adapter import N_ITEMS, D, L, _bank, _base, _inputs


def test_an_adapter_comes_back_with_its_weights_config_and_code_table(tmp_path):
    cfg = AdapterConfig(window=5, code_dim=8, rank=2)
    adapter = Adapter(cfg, N_ITEMS, D, L, code_sizes=[4, 4, 4])
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.3)
    table = torch.randint(0, 5, (N_ITEMS, 3))
    save_adapter(tmp_path / "adapter-main", adapter, {"seed": 3}, code_table=table)
    loaded, info = load_adapter(tmp_path / "adapter-main")
    assert info["seed"] == 3 and info["code_sizes"] == [4, 4, 4] and AdapterConfig(**info["config"]) == cfg
    assert not loaded.training and torch.equal(load_code_table(tmp_path / "adapter-main"), table)
    window, codes, state = _inputs()
    with torch.no_grad():
        want, got = adapter.eval()(window, codes, state)[1], loaded(window, codes, state)[1]
    assert all(torch.equal(a, b) for a, b in zip(got.dW + got.db, want.dW + want.db))
    assert yaml.safe_load((tmp_path / "adapter-main" / "adapter.yaml").read_text())["n_items"] == N_ITEMS


def test_a_bank_comes_back_with_the_same_state(tmp_path):
    bank, *_ = _bank(PrototypeConfig(k=3, variant="centre"))
    save_bank(tmp_path / "bank-centre", bank)
    loaded = load_bank(tmp_path / "bank-centre")
    assert loaded.cfg == bank.cfg and loaded.size == bank.size
    want = bank.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())


def test_missing_artifacts_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="no complete adapter in"):
        load_adapter(tmp_path)
    with pytest.raises(ArtifactError, match="no complete prototype bank in"):
        load_bank(tmp_path)
    assert load_code_table(tmp_path) is None
    for reader in (lambda d: code_table_for(d, np.array(["[PAD]", "a"])), lambda d: user_context_for(d, None, 3)):
        with pytest.raises(ArtifactError, match=r"no semantic codebook in .*run `persona codebook` first"):
            reader(tmp_path)
    context_adapter = Adapter(AdapterConfig(window=5, code_dim=8, use_context=True), N_ITEMS, D, L,
                              context_sizes=[4, 4])
    with pytest.raises(ArtifactError, match="save it with its context"):
        save_adapter(tmp_path / "adapter-ctx", context_adapter, {})


def test_the_code_table_follows_the_checkpoints_item_order(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    ids = [f"i{k}" for k in range(40)]
    book = SemanticCodebook.build(x, CodebookConfig(levels=1, max_levels=1, bits=4), item_ids=ids)
    directory = book.save(run_layout.codebook_dir(tmp_path, "toy"))
    tokens = np.array(["[PAD]", "i7", "i0", "unknown", "i39"])
    table = code_table_for(directory, tokens)
    assert table.shape == (5, book.width) and table.dtype == torch.int64
    assert table[0].tolist() == [0] * book.width and table[3].tolist() == [0] * book.width  # padding, unknown item
    for row, k in [(1, 7), (2, 0), (4, 39)]:
        assert table[row].tolist() == (book.semantic_ids[k] + 1).tolist()
    with pytest.raises(ArtifactError, match="lacks item_embeddings"):  # the codebook without its item embeddings
        user_context_for(directory, tokens, 3)


def test_freeze_stops_every_gradient_and_dropout():
    model = freeze(_base().train())
    assert not model.training and not any(p.requires_grad for p in model.parameters())
