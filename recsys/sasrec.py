"""SASRec (Kang & McAuley, 2018) as a device model: RecBole's ``SASRec`` module, read by our hooks.

Causal self-attention over the item sequence; trained with next-item cross-entropy at every position
(:class:`recsys.losses.PositionLossSum`). :func:`sasrec_last` computes only the read-out position in the
last layer (what ranking and validation cost).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender import SASRec

from recsys.config import ModelConfig
from recsys.model_spec import ModelSpec


def sasrec_positions(enc: SASRec, item_seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """SASRec's transformer output at every position (RecBole's forward, before its final gather);
    ``items`` is the item table the sequence is embedded with (``EditableSeqRec.item_embeddings``)."""
    pos = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0).expand_as(item_seq)
    x = F.embedding(item_seq, items, padding_idx=0) + enc.position_embedding(pos)
    x = enc.dropout(enc.LayerNorm(x))
    mask = enc.get_attention_mask(item_seq)
    return enc.trm_encoder(x, mask, output_all_encoded_layers=True)[-1]


def attention_eval(mha, query_in: torch.Tensor, kv_in: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RecBole ``MultiHeadAttention.forward`` in eval mode for the queries of ``query_in`` over ``kv_in``,
    with one fused ``scaled_dot_product_attention`` (softmax(q·k/√d + mask)·v)."""
    b, tq, _ = query_in.shape
    heads, size = mha.num_attention_heads, mha.attention_head_size
    q = mha.query(query_in).view(b, tq, heads, size).transpose(1, 2)
    k = mha.key(kv_in).view(b, -1, heads, size).transpose(1, 2)
    v = mha.value(kv_in).view(b, -1, heads, size).transpose(1, 2)
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    hidden = mha.dense(context.transpose(1, 2).reshape(b, tq, heads * size))
    return mha.LayerNorm(hidden + query_in)


def feed_forward_eval(ff, x: torch.Tensor) -> torch.Tensor:
    """RecBole ``FeedForward.forward`` in eval mode; its erf GELU as the one fused ``F.gelu``."""
    act = ff.intermediate_act_fn
    h = ff.dense_1(x)
    h = F.gelu(h) if getattr(act, "__func__", None) is type(ff).gelu else act(h)
    return ff.LayerNorm(ff.dense_2(h) + x)


def sasrec_last(enc: SASRec, item_seq: torch.Tensor, item_len: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """SASRec's output at each row's last real position only, ``[B, D]``.

    The same computation as :func:`sasrec_positions` followed by a gather, on RecBole's own modules
    and weights; the last layer computes keys and values at every position but its query, attention,
    output projection and feed-forward only at the one position that is read (≈ 40 % fewer FLOPs for
    two layers: what ranking and validation cost). In eval mode attention is one fused kernel and
    GELU one op (same numbers to ~1e-6, tested).
    """
    pos = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0).expand_as(item_seq)
    x = enc.dropout(enc.LayerNorm(F.embedding(item_seq, items, padding_idx=0) + enc.position_embedding(pos)))
    mask = enc.get_attention_mask(item_seq)  # [B, 1, T, T] additive: 0 or -10000
    *lower, top = enc.trm_encoder.layer
    rows = torch.arange(x.size(0), device=x.device)
    last = (item_len - 1).clamp(min=0, max=x.size(1) - 1)
    row_mask = mask[rows, :, last].unsqueeze(2)  # [B, 1, 1, T]: the read-out position's mask row
    if not enc.training:
        for layer in lower:
            x = feed_forward_eval(layer.feed_forward, attention_eval(layer.multi_head_attention, x, x, mask))
        query = x[rows, last].unsqueeze(1)
        return feed_forward_eval(top.feed_forward, attention_eval(top.multi_head_attention, query, x, row_mask))[:, 0]
    for layer in lower:
        x = layer(x, mask)
    att, ffn = top.multi_head_attention, top.feed_forward
    b, heads, size = x.size(0), att.num_attention_heads, att.attention_head_size
    x_last = x[rows, last]  # [B, D]
    q = att.query(x_last).view(b, heads, 1, size)
    k = att.transpose_for_scores(att.key(x)).permute(0, 2, 3, 1)  # [B, h, size, T]
    v = att.transpose_for_scores(att.value(x)).permute(0, 2, 1, 3)  # [B, h, T, size]
    probs = att.attn_dropout(att.softmax(torch.matmul(q, k) / att.sqrt_attention_head_size + row_mask))
    h = att.LayerNorm(att.out_dropout(att.dense(torch.matmul(probs, v).reshape(b, heads * size))) + x_last)
    return ffn(h)


def sasrec_params(m: ModelConfig) -> dict:
    return {
        "n_layers": m.n_layers,
        "n_heads": m.n_heads,
        "hidden_size": m.hidden_size,
        "inner_size": m.inner_size,
        "hidden_dropout_prob": m.dropout,
        "attn_dropout_prob": m.dropout,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
    }


SASREC = ModelSpec("sasrec", SASRec, sasrec_params, sasrec_positions, sasrec_last)
