"""The training losses (recsys/losses.py): the summed catalogue cross-entropy, unseen items left out of the
softmax when asked, and each model's own loss picked from its spec."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recsys.bert4rec import ClozeLoss
from recsys.config import ModelConfig
from recsys.item_side import ItemSide
from recsys.losses import PositionLossSum, catalogue_ce_sum, training_loss
from recsys.models import MODELS, EditableSeqRec


def _model(name: str = "sasrec", **kw) -> EditableSeqRec:
    torch.manual_seed(0)
    side = kw.pop("side", None)
    return EditableSeqRec(name, ModelConfig(hidden_size=16, inner_size=32, dropout=0.0, **kw), 30, 6, side)


def test_the_catalogue_cross_entropy_is_the_explicit_sum():
    model = _model(item_side="none")
    states, targets = torch.randn(5, 16), torch.tensor([1, 2, 3, 29, 7])
    explicit = F.cross_entropy(model.logits(model.head(states)), targets, reduction="sum")
    torch.testing.assert_close(catalogue_ce_sum(model, states, targets, model.item_embeddings), explicit)


def test_unseen_items_leave_the_softmax_unless_they_are_a_target():
    seen = torch.arange(30) % 2 == 0
    side = ItemSide(torch.randn(30, 8), None, seen)
    model = _model(item_side="fused", side=side, unseen_negatives=False)
    states, targets = torch.randn(3, 16), torch.tensor([2, 3, 4])  # 3 is unseen, but a target
    items = model.item_embeddings
    logits = model.logits(model.head(states), items)
    keep = seen.clone()
    keep[3] = True
    expected = F.cross_entropy(logits.masked_fill(~keep, float("-inf")), targets, reduction="sum")
    torch.testing.assert_close(catalogue_ce_sum(model, states, targets, items), expected)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_trains_with_its_specs_loss(name):
    loss = training_loss(_model(name, item_side="none"))
    assert isinstance(loss, ClozeLoss if name == "bert4rec" else PositionLossSum)
