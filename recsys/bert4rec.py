"""BERT4Rec (Sun et al., 2019) as a device model: RecBole's ``BERT4Rec`` module, read by our hooks.

A bidirectional transformer trained by cloze: a share of each training window's items is replaced by
the mask token (the embedding row after the catalogue, ``n_items``) and predicted from both sides
(:class:`ClozeLoss`, RecBole's ``mask_ratio`` 0.2). To rank, the mask token is appended after a user's
history and its output is the user state (RecBole's ``reconstruct_test_data``; a full row drops its
first item to make room, as RecBole's does — RecBole shifts every row, we shift the full ones only).
The state then goes through the editable head and is scored against the catalogue rows, as for every
device model; RecBole's ``output_bias`` is not used (the head's last layer carries a bias instead).

Its outputs are not causal: position ``t`` sees the items after it, so a prefix's state is read with
the mask appended after that prefix (``ModelSpec.causal = False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender import BERT4Rec
from torch import nn

from recsys.config import ModelConfig
from recsys.losses import catalogue_ce_sum, used_width
from recsys.model_spec import ModelSpec
from recsys.sasrec import sasrec_params

MASK_RATIO = 0.2  # RecBole's default share of masked positions per training window


def with_mask_row(enc: BERT4Rec, items: torch.Tensor) -> torch.Tensor:
    """The catalogue table ``items`` ``[n_items, D]`` with the encoder's mask-token row appended."""
    return torch.cat([items, enc.item_embedding.weight[items.size(0) :]])


def bert4rec_positions(enc: BERT4Rec, item_seq: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """BERT4Rec's output at every position (RecBole's ``forward``: bidirectional attention over the
    non-padding positions, then its output feed-forward); ``item_seq`` may hold the mask token."""
    return _encode(enc, item_seq, _positions(item_seq), items)


def bert4rec_last(enc: BERT4Rec, item_seq: torch.Tensor, item_len: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The state of each row's history: the output at a mask token appended after its last item.

    Every op is shape-static (no width computed from the data), so one traced graph serves every width.
    """
    max_len = enc.position_embedding.num_embeddings
    rows = torch.arange(item_seq.size(0), device=item_seq.device)
    seq = torch.cat([item_seq, torch.zeros_like(item_seq[:, :1])], dim=1)
    last = item_len.clamp(min=0, max=item_seq.size(1)).long()
    seq = seq.index_put((rows, last), torch.full_like(last, enc.mask_token))
    shift = (last + 1 - max_len).clamp(min=0)  # a full row drops its first item (its position falls off)
    seq = seq.masked_fill((shift > 0).unsqueeze(1) & (torch.arange(seq.size(1), device=seq.device) == 0), 0)
    pos = (torch.arange(seq.size(1), device=seq.device).unsqueeze(0) - shift.unsqueeze(1)).clamp(0, max_len - 1)
    return _encode(enc, seq, pos, items)[rows, last]


def _positions(item_seq: torch.Tensor) -> torch.Tensor:
    return torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0).expand_as(item_seq)


def _encode(enc: BERT4Rec, seq: torch.Tensor, pos: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    x = F.embedding(seq, with_mask_row(enc, items), padding_idx=0) + enc.position_embedding(pos)
    x = enc.dropout(enc.LayerNorm(x))
    mask = enc.get_attention_mask(seq, bidirectional=True)
    out = enc.trm_encoder(x, mask, output_all_encoded_layers=True)[-1]
    return enc.output_ln(enc.output_gelu(enc.output_ffn(out)))


class ClozeLoss(nn.Module):
    """Cross-entropy at masked positions of the training windows, rescaled to the window's positions.

    The window's items are the targets of :func:`recsys.train.make_windows` (right-padded); each real
    position is masked with probability :data:`MASK_RATIO` (at least one per window: its last item). The
    sum is scaled by positions / masked positions, so that :func:`recsys.loop.fit`, which divides by the
    windows' lengths, optimises the mean cross-entropy per masked item.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        real = targets > 0
        width = used_width(real)
        seq, real = targets[:, :width], real[:, :width]
        masked = real & (torch.rand(seq.shape, device=seq.device) < MASK_RATIO)
        lengths = real.sum(1)
        none = (masked.sum(1) == 0) & (lengths > 0)
        masked[none.nonzero().squeeze(1), lengths[none] - 1] = True
        enc = self.model.encoder
        items = self.model.item_embeddings
        states = bert4rec_positions(enc, seq.masked_fill(masked, enc.mask_token), items)
        loss = catalogue_ce_sum(self.model, states[masked], seq[masked], items)
        return loss * real.sum() / masked.sum().clamp(min=1)


def bert4rec_params(m: ModelConfig) -> dict:
    """SASRec's transformer keys, plus what RecBole's BERT4Rec constructor reads for its cloze training."""
    return {**sasrec_params(m), "mask_ratio": MASK_RATIO, "MASK_ITEM_SEQ": "Mask_item_id_list",
            "POS_ITEMS": "Pos_item_id", "NEG_ITEMS": "Neg_item_id", "MASK_INDEX": "MASK_INDEX"}  # fmt: skip


BERT4REC = ModelSpec("bert4rec", BERT4Rec, bert4rec_params, bert4rec_positions, bert4rec_last, extra_rows=1,
                     causal=False, loss=ClozeLoss)  # fmt: skip
