"""recipes.artifacts: with ``reuse``, a seed's saved adapter and bank are loaded once each and only when they were made
with this run's config (on a tiny checkpoint of the ml-100k split and artifacts saved beside it)."""

from __future__ import annotations

import pytest
import torch

from llm_cloud.adapter import Adapter
from llm_cloud.adapter_config import PrototypeConfig
from llm_cloud.artifacts import ArtifactError, save_adapter, save_bank
from recipes.artifacts import ArtifactBuilder, seed_inputs
from recipes.config import load_recipe_config, with_overrides
from recsys import run_layout
from recsys.checkpoint import save_checkpoint
from recsys.models import EditableSeqRec
from tests.llm_cloud.helpers import tiny_overrides
from tests.llm_cloud.test_adapter import _bank


@pytest.fixture()
def saved(ml100k_split, workdir, tmp_path):
    """A run dir with a (random) tiny base, an untrained main adapter and a centre bank, as a run leaves them."""
    _, split = ml100k_split
    cfg = load_recipe_config(overrides=[*tiny_overrides(workdir, tmp_path / "runs"), "prototypes.variant=centre"])
    torch.manual_seed(0)
    base = EditableSeqRec(cfg.model, cfg.model_params, split.n_items, cfg.data.max_seq_len)
    run = save_checkpoint(cfg.run_dir(0), base, cfg.dataset, split.item_tokens)
    adapter = Adapter(cfg.adapter, split.n_items, base.head.dim, len(base.head.layers))
    save_adapter(run_layout.adapter_dir(run, "main"), adapter, {"seed": 0})
    p = cfg.prototypes
    bank, *_ = _bank(PrototypeConfig(k=p.k, variant="centre", finetune_epochs=p.finetune_epochs,
                                     build_samples=p.build_samples))
    save_bank(run_layout.bank_dir(run, "centre"), bank)
    return cfg, split, bank


def test_saved_artifacts_are_loaded_once_frozen_and_with_todays_bank_config(saved):
    cfg, split, bank = saved
    inputs = seed_inputs(cfg, 0, split)
    assert inputs.code_table is None and not any(p.requires_grad for p in inputs.base.parameters())
    builder = ArtifactBuilder(cfg, inputs, reuse=True)
    adapter = builder.adapter("main")
    assert builder.adapter("main") is adapter and not any(p.requires_grad for p in adapter.parameters())
    assert adapter.cfg.window == cfg.adapter.window
    loaded = builder.bank("centre")
    assert builder.bank("centre") is loaded and loaded.size == bank.size and loaded.cfg == cfg.prototypes
    assert builder.timings == {}  # nothing was trained


@pytest.mark.parametrize(("override", "what", "message"), [
    ("adapter.window=5", "adapter", "saved adapter-main was made with window=4, this run asks for 5"),
    ("prototypes.k=3", "bank", "saved bank-centre was made with k=2, this run asks for 3"),
])
def test_artifacts_made_with_another_config_are_refused(saved, override, what, message):
    cfg, split, _ = saved
    cfg = with_overrides(cfg, [override])
    builder = ArtifactBuilder(cfg, seed_inputs(cfg, 0, split), reuse=True)
    with pytest.raises(ArtifactError, match=message):
        builder.adapter("main") if what == "adapter" else builder.bank("centre")


def test_a_variant_never_saved_is_a_missing_artifact(saved):
    cfg, split, _ = saved
    builder = ArtifactBuilder(cfg, seed_inputs(cfg, 0, split), reuse=True)
    with pytest.raises(ArtifactError, match="no complete adapter in .*adapter-duet"):
        builder.adapter("duet")
    with pytest.raises(ArtifactError, match="no complete prototype bank in .*bank-finetune"):
        builder.bank("finetune")
