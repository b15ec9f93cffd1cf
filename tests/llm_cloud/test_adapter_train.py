"""llm_cloud.adapter_train: the edited base's scores and loss, and a real (tiny) adapter fit on a small part of the
ml-100k split with the base frozen."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from recbole.data.interaction import Interaction

from llm_cloud.adapter import Adapter, edited_logits
from llm_cloud.adapter_config import AdapterConfig
from llm_cloud.adapter_data import training_samples
from llm_cloud.adapter_train import AdapterLossSum, adapter_score_fn, train_adapter
from recsys.config import ModelConfig
from recsys.evaluate import evaluate_rows
from recsys.models import EditableSeqRec, score_with_edit
from tests.llm_cloud.test_adapter import N_ITEMS, D, L, _base


def _rows() -> Interaction:
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(1, N_ITEMS, (6, 10), generator=g)
    length = torch.tensor([10, 7, 3, 1, 5, 9])
    seq[torch.arange(10).view(1, -1) >= length.view(-1, 1)] = 0
    return Interaction({"item_id_list": seq, "item_length": length, "item_id": torch.randint(1, N_ITEMS, (6,))})


def _trained_looking(cfg: AdapterConfig) -> Adapter:
    adapter = Adapter(cfg, N_ITEMS, D, L)
    for p in adapter.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return adapter


def test_an_untrained_adapter_scores_as_the_base_and_a_trained_one_edits_it():
    base, rows = _base(), _rows()
    plain = score_with_edit(base, rows["item_id_list"], rows["item_length"])
    cfg = AdapterConfig(window=4, code_dim=8)
    with torch.no_grad():
        assert torch.allclose(adapter_score_fn(base, Adapter(cfg, N_ITEMS, D, L), 4, None)(rows), plain, atol=1e-6)
        assert not torch.allclose(adapter_score_fn(base, _trained_looking(cfg), 4, None)(rows), plain, atol=1e-3)


def test_the_loss_is_the_summed_cross_entropy_of_the_next_items_under_the_edited_head():
    base = _base()
    adapter = _trained_looking(AdapterConfig(window=4, code_dim=8, n_future=2))
    samples = training_samples(base, [torch.randint(1, N_ITEMS, (9,)).numpy() for _ in range(3)], 4, 2)
    loss = AdapterLossSum(adapter, base)
    assert list(loss.children()) == [adapter]  # the frozen base is not part of the module tree DDP syncs
    with torch.no_grad():
        got = loss(samples.window, None, samples.state, samples.targets)
        _, edit = adapter(samples.window, None, samples.state, base)
        logp = torch.log_softmax(edited_logits(base, samples.state, edit), -1)
        mask = samples.targets > 0
        want = -logp.gather(1, samples.targets.clamp(min=0))[mask].sum()
    torch.testing.assert_close(got, want)
    assert int(mask.sum()) < mask.numel()  # the last sample of each sequence has one next item, not two
    b = samples.batch(torch.arange(len(samples)), None)  # as the loop feeds it (indexed copies of the samples)
    loss(b.window, b.codes, b.state, b.targets).backward()  # and its gradients stay finite
    assert all(torch.isfinite(p.grad).all() for p in adapter.parameters() if p.grad is not None)


@pytest.fixture(scope="module")
def small_split(ml100k_split):
    """The real ml-100k split cut to 100 users' training sequences and 1,000 validation rows."""
    _, split = ml100k_split
    return dataclasses.replace(split, train_sequences=split.train_sequences[:100],
                               valid=SimpleNamespace(inter_feat=split.eval_rows("valid")[:1000]))


def test_train_adapter_keeps_the_best_epoch_and_leaves_the_base_untouched(small_split):
    torch.manual_seed(0)
    base = EditableSeqRec("sasrec", ModelConfig(hidden_size=16, inner_size=32, item_side="none"), small_split.n_items,
                          50)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = AdapterConfig(window=4, code_dim=8, epochs=2, patience=5, batch_size=128, samples_per_epoch=512,
                        use_codebook=False)
    result = train_adapter(base, small_split, cfg, seed=0, progress=False)
    assert len(result.samples) == sum(len(s) - 1 for s in small_split.train_sequences)
    assert len(result.history) == 2 and all(not p.requires_grad for p in base.parameters())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    rows = small_split.eval_rows("valid")
    with torch.no_grad():
        got = evaluate_rows(adapter_score_fn(base, result.adapter.eval(), 4, None), rows, small_split.config, 500,
                            by_length=True)
    assert got["ndcg@10"] == pytest.approx(result.best_valid["ndcg@10"], abs=1e-6)  # the kept epoch's adapter
