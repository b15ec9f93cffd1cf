"""GRU4Rec (Hidasi et al., 2016) as a device model: RecBole's ``GRU4Rec`` module, read by our hooks.

A left-to-right GRU over the item sequence; trained with next-item cross-entropy at every position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender import GRU4Rec

from recsys.config import ModelConfig
from recsys.model_spec import ModelSpec


def gru4rec_positions(enc: GRU4Rec, item_seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """GRU4Rec's output at every position (RecBole's forward, before its final gather)."""
    x = enc.emb_dropout(F.embedding(item_seq, items, padding_idx=0))
    out, _ = enc.gru_layers(x)
    return enc.dense(out)


def gru4rec_params(m: ModelConfig) -> dict:
    return {
        "embedding_size": m.hidden_size,
        "hidden_size": m.hidden_size,
        "num_layers": m.n_layers,
        "dropout_prob": m.dropout,
    }


GRU4REC = ModelSpec("gru4rec", GRU4Rec, gru4rec_params, gru4rec_positions)
