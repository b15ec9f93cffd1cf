"""What the library needs to know about a device model: one :class:`ModelSpec` per model module.

A model module (``recsys/sasrec.py``, ``recsys/gru4rec.py``, ``recsys/bert4rec.py``) wraps one RecBole
sequential model and states, as hooks, everything :class:`recsys.models.EditableSeqRec` and training
assume about it: its RecBole parameters, the encoder output at every position and at each row's last
position, extra embedding rows after the catalogue (BERT4Rec's mask token), whether states are causal
(prefix states) and its training loss. ``recsys.models.MODELS`` lists the specs; nothing is imported by
string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from recsys.config import ModelConfig

# (encoder, item_seq [B, T], item table [n_items, D]) -> [B, T, D]
Positions = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
# (encoder, item_seq [B, T], item_len [B], item table [n_items, D]) -> [B, D]
Last = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelSpec:
    """One device model: how to build its RecBole encoder, read its states and train it."""

    name: str
    recbole_class: type
    params: Callable[[ModelConfig], dict]  # RecBole config keys of the model from our hyper-parameters
    positions: Positions  # the encoder output at every position (training's input to the loss)
    # the state at each row's last real position, when cheaper than all positions + a gather (or, for a
    # non-causal model, the only right way to read it)
    last: Last | None = None
    extra_rows: int = 0  # embedding rows after the n_items catalogue rows (never scored; BERT4Rec's mask token)
    causal: bool = True  # position t's output depends on items ≤ t only (so it is the state of that prefix)
    # the training loss module for a model (None: next-item cross-entropy at every position,
    # recsys.losses.PositionLossSum); called with the EditableSeqRec
    loss: Callable[[nn.Module], nn.Module] | None = None


def recbole_model_config(spec: ModelSpec, m: ModelConfig, max_seq_len: int) -> dict:
    """The keys RecBole's sequential model constructors read, with our hyper-parameters."""
    return {
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length",
        "MAX_ITEM_LIST_LENGTH": max_seq_len,
        "NEG_PREFIX": "neg_",
        "device": "cpu",
        "loss_type": "CE",
        **spec.params(m),
    }
