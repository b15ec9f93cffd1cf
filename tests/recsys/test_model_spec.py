"""The model registry is built from the specs (recsys/model_spec.py): each builds RecBole's class with our
hyper-parameters, and the default run's models are registered."""

from __future__ import annotations

import pytest

from recsys.config import ModelConfig
from recsys.model_spec import recbole_model_config
from recsys.models import DEFAULT_MODELS, MODELS, EditableSeqRec


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_spec_builds_recboles_model_with_our_width(name):
    spec = MODELS[name]
    cfg = recbole_model_config(spec, ModelConfig(hidden_size=24, inner_size=48), max_seq_len=9)
    assert spec.name == name and cfg["MAX_ITEM_LIST_LENGTH"] == 9 and cfg["hidden_size"] == 24
    model = EditableSeqRec(name, ModelConfig(hidden_size=24, inner_size=48, item_side="none"), 20, 9)
    assert isinstance(model.encoder, spec.recbole_class)
    assert model.encoder.item_embedding.num_embeddings == 20 + spec.extra_rows
    assert model.item_embeddings.shape == (20, 24)  # scored: the catalogue rows only


def test_the_default_run_trains_registered_models():
    assert set(DEFAULT_MODELS) <= set(MODELS) and {"sasrec", "gru4rec", "bert4rec"} <= set(MODELS)
