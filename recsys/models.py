"""Editable device models: a RecBole sequence encoder, then an explicit editable head.

``user state h = encoder(items)``; ``query q = h + head(h)`` with ``head`` = L dense D×D layers
(activation between them); ``score(item) = q · e_item``. The head's ``(W_l, b_l)`` are the anchors
that the cloud edits: :meth:`EditableHead.forward` applies per-sample ``clip(ΔW_l), clip(Δb_l)``
with plain tensor ops, so an edited ranking needs forward passes only.

One registry (``MODELS``) maps a model name to its spec (:class:`recsys.model_spec.ModelSpec`), one
module per model (``recsys/sasrec.py``, ``gru4rec.py``, ``bert4rec.py``); there is no import-by-string.
Adding a model: its module + a line below + ``recsys/configs/models/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import recsys  # noqa: F401  (numpy compatibility before RecBole)
from recsys.bert4rec import BERT4REC
from recsys.config import ModelConfig
from recsys.gru4rec import GRU4REC
from recsys.item_side import ItemSide
from recsys.model_spec import ModelSpec, recbole_model_config
from recsys.sasrec import SASREC

# Importing RecBole's sequential models runs ``torch.autograd.set_detect_anomaly(True)`` (in its SINE
# module) for the whole process: every op then records a traceback and every backward output is
# checked for NaN, which made training ≈ 2× slower. No model of ours needs it.
torch.autograd.set_detect_anomaly(False)

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu}


@dataclass
class HeadEdit:
    """Per-layer edits of the head: ``dW[l]`` is ``[B, D, D]`` (or ``[D, D]`` shared), ``db[l]`` ``[B, D]``/``[D]``.

    ``None`` for a layer leaves it unedited. ``clip`` bounds every entry to ``[-clip, clip]``.
    """

    dW: list[torch.Tensor | None]
    db: list[torch.Tensor | None]
    clip: float = 1.0

    @staticmethod
    def zeros(n_layers: int, dim: int, batch: int | None = None) -> HeadEdit:
        lead = () if batch is None else (batch,)
        return HeadEdit(
            [torch.zeros(*lead, dim, dim) for _ in range(n_layers)], [torch.zeros(*lead, dim) for _ in range(n_layers)]
        )

    def clipped(self) -> HeadEdit:
        c = self.clip
        if c == float("inf"):  # already clipped (a batch of per-row edits, an exported graph's input)
            return self
        return HeadEdit(
            [None if w is None else w.clamp(-c, c) for w in self.dW],
            [None if b is None else b.clamp(-c, c) for b in self.db],
            clip=c,
        )


class EditableHead(nn.Module):
    """``q = h + f(h)``, f = L dense layers; the last starts at zero so an untrained head is the identity."""

    def __init__(self, dim: int, n_layers: int, activation: str = "tanh"):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        self.activation = activation
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    @property
    def dim(self) -> int:
        return self.layers[0].in_features

    def anchors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The editable ``(W_l, b_l)`` of each layer (live parameters)."""
        return [(layer.weight, layer.bias) for layer in self.layers]

    def forward(self, h: torch.Tensor, edit: HeadEdit | None = None) -> torch.Tensor:
        act = ACTIVATIONS[self.activation]
        edit = edit.clipped() if edit is not None else None
        x = h
        for i, layer in enumerate(self.layers):
            y = F.linear(x, layer.weight, layer.bias)
            if edit is not None:
                dw, db = edit.dW[i], edit.db[i]
                if dw is not None:
                    y = y + (
                        x @ dw.transpose(-1, -2)
                        if dw.dim() == 2
                        else torch.bmm(x.unsqueeze(1), dw.transpose(1, 2)).squeeze(1)
                    )
                if db is not None:
                    y = y + db
            x = act(y) if i < len(self.layers) - 1 else y
        return h + x


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (SASREC, GRU4REC, BERT4REC)}

# the models ``persona run`` / ``persona train`` train when ``--models`` is not given
DEFAULT_MODELS: tuple[str, ...] = ("sasrec", "gru4rec")


class UnknownModelError(ValueError):
    pass


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UnknownModelError(f"unknown model '{name}' (known: {', '.join(sorted(MODELS))})")
    return MODELS[name]


class _ItemVocab:
    """What RecBole's model constructors read from a Dataset: the number of item ids."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def num(self, field: str) -> int:
        return self.n_items


class SideViews(nn.Module):
    """LLM item knowledge added to the ID embeddings (``model_params.item_side``, :mod:`recsys.item_side`).

    ``fused``: a trained projection of the frozen whitened LLM view; ``codes``: per-level embeddings of
    the semantic codes, shared by the items with that code. An item without training interactions keeps
    its side view only (its ID embedding was never trained); while training, each batch also drops the ID
    view of a random ``id_dropout`` share of items, so the side view learns to rank on its own.
    """

    def __init__(self, kind: str, side: ItemSide, dim: int, id_dropout: float, unseen_negatives: bool = True):
        super().__init__()
        self.kind, self.id_dropout, self.unseen_negatives = kind, id_dropout, unseen_negatives
        self.register_buffer("seen", side.seen.clone().bool())
        if kind == "fused":
            self.register_buffer("vectors", side.vectors.clone().float())
            self.proj = nn.Linear(side.vectors.size(1), dim, bias=False)
            nn.init.normal_(self.proj.weight, std=0.02 / side.vectors.size(1) ** 0.5)  # outputs ~ the ID init's std
        elif kind == "codes":
            if side.codes is None:
                raise ValueError("item_side=codes needs semantic codes in the side file")
            self.register_buffer("codes", side.codes.clone().long())
            self.code_embs = nn.ModuleList(nn.Embedding(n + 1, dim, padding_idx=0) for n in side.code_sizes)
            for emb in self.code_embs:
                nn.init.normal_(emb.weight, std=0.02)
                emb.weight.data[0] = 0
        else:
            raise ValueError(f"unknown side view '{kind}'")

    def training_mask(self) -> torch.Tensor | None:
        """Items the training softmax leaves out (``unseen_negatives=False``: those with no training interaction)."""
        return None if self.unseen_negatives else ~self.seen

    def forward(self, id_weight: torch.Tensor) -> torch.Tensor:
        """The item table ``[n_items, D]``: kept ID view + side view."""
        keep = self.seen
        if self.training and self.id_dropout > 0:
            keep = keep & (torch.rand(keep.shape, device=keep.device) >= self.id_dropout)
        out = id_weight * keep.unsqueeze(1).to(id_weight.dtype)
        if self.kind == "fused":
            return out + F.linear(self.vectors, self.proj.weight)
        for level, emb in enumerate(self.code_embs):
            out = out + emb(self.codes[:, level])
        return out


def side_from_state(state: dict[str, torch.Tensor]) -> ItemSide | None:
    """The side-view buffers a checkpoint's state_dict holds (shapes to rebuild the model with)."""
    if "side.seen" not in state:
        return None
    vectors = state.get("side.vectors", torch.zeros(len(state["side.seen"]), 1))
    return ItemSide(vectors, state.get("side.codes"), state["side.seen"])


class EditableSeqRec(nn.Module):
    """A RecBole sequential model (``encoder``) with an editable head between user state and scoring.

    ``side`` (LLM item knowledge) is read for ``model_params.item_side`` ``init`` (the starting ID
    embeddings) and needed for ``fused`` and ``codes`` (kept as buffers of the model).
    """

    def __init__(self, name: str, m: ModelConfig, n_items: int, max_seq_len: int, side: ItemSide | None = None):
        super().__init__()
        self.spec = get_spec(name)
        self.model_config = m
        self.n_items = n_items
        self.max_seq_len = max_seq_len
        self.encoder = self.spec.recbole_class(recbole_model_config(self.spec, m, max_seq_len), _ItemVocab(n_items))
        self.head = EditableHead(m.hidden_size, m.head_layers, m.head_activation)
        self.side: SideViews | None = None
        self._table: tuple[tuple, torch.Tensor] | None = None
        if side is not None and len(side.seen) != n_items:
            raise ValueError(f"side knowledge has {len(side.seen)} items, the model {n_items}")
        if m.item_side == "init" and side is not None:  # (a checkpoint of an init model loads without side)
            self._init_from(side.vectors)
        elif m.item_side in ("fused", "codes"):
            if side is None:
                raise ValueError(f"model_params.item_side={m.item_side} needs the items' side knowledge")
            self.side = SideViews(m.item_side, side, m.hidden_size, m.id_dropout, m.unseen_negatives)

    @torch.no_grad()
    def _init_from(self, vectors: torch.Tensor) -> None:
        """ID embeddings start from the whitened LLM view (first D components), at the default init's std."""
        w = self.encoder.item_embedding.weight[: self.n_items]  # (a view: extra rows, e.g. a mask token, kept)
        v = torch.zeros(w.shape)
        v[:, : min(vectors.size(1), w.size(1))] = vectors[:, : w.size(1)]
        w[1:] = v[1:] * (w[1:].std() / v[1:].std().clamp(min=1e-8))

    @property
    def item_embeddings(self) -> torch.Tensor:
        """``[n_items, D]``: the vectors items are embedded (input) and scored (output) with.

        With side views, an inference-mode table is computed once per weight version and reused. Rows the
        encoder holds after the catalogue (``spec.extra_rows``: BERT4Rec's mask token) are not in it.
        """
        w = self.encoder.item_embedding.weight
        w = w[: self.n_items] if self.spec.extra_rows else w
        if self.side is None:
            return w
        if self.training or torch.is_grad_enabled():
            return self.side(w)
        params = [w, *self.side.parameters()]
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._table is None or self._table[0] != key:
            self._table = (key, self.side(w))
        return self._table[1]

    @torch.no_grad()
    def folded(self) -> EditableSeqRec:
        """An ID-only copy (``item_side=none``) whose item table is this model's inference table: the same
        scores and user states, without the side views' buffers (what a device needs; ``persona export``)."""
        m = self.model_config.model_copy(update={"item_side": "none"})
        out = EditableSeqRec(self.spec.name, m, self.n_items, self.max_seq_len)
        was_training = self.training
        self.eval()
        try:
            table = self.item_embeddings.detach().clone()
        finally:
            self.train(was_training)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("side.")}
        extra = self.encoder.item_embedding.weight[self.n_items :].detach().clone()
        state["encoder.item_embedding.weight"] = torch.cat([table, extra])
        out.load_state_dict(state)
        return out.eval()

    def position_states(self, item_seq: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, T, D]``: the state of every prefix of right-padded ``item_seq``
        (``items``: the item table to embed with, default :attr:`item_embeddings`).

        For a causal model the encoder's output at every position, one pass; for a non-causal one
        (BERT4Rec) each prefix is read on its own (one pass per position: T times the cost).
        """
        items = self.item_embeddings if items is None else items
        if self.spec.causal:
            return self.spec.positions(self.encoder, item_seq, items)
        lengths = torch.arange(1, item_seq.size(1) + 1, device=item_seq.device)
        return torch.stack([self.last_state(item_seq[:, :t], lengths[t - 1].expand(item_seq.size(0)), items)
                            for t in range(1, item_seq.size(1) + 1)], dim=1)  # fmt: skip

    def user_state(self, item_seq: torch.Tensor, item_len: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` state after the last real item of each row.

        Trailing padding columns are dropped first (unless a row is empty): with right padding and causal
        attention (SASRec) or a left-to-right GRU they cannot change the state, and they cost as much as
        real positions. The trim depends on the data, so an exported graph calls :meth:`last_state`.
        """
        if item_seq.numel() and bool((item_seq[:, 0] != 0).all()):  # an empty row attends over padding only
            item_seq = item_seq[:, : max(int(item_len.max()), 1)]
        return self.last_state(item_seq, item_len)

    def last_state(
        self, item_seq: torch.Tensor, item_len: torch.Tensor, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, D]`` state at position ``item_len − 1`` of each row (a gather), for any width of ``item_seq``.

        No shape depends on the data, so a traced graph (``recsys.onnx_export``) holds for every batch
        and width; ``items``: the item table to embed with, default :attr:`item_embeddings`.
        """
        items = self.item_embeddings if items is None else items
        if self.spec.last is not None:
            return self.spec.last(self.encoder, item_seq, item_len, items)
        states = self.position_states(item_seq, items)
        idx = (item_len - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, states.size(-1))
        return states.gather(1, idx).squeeze(1)

    def logits(self, query: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every item for ``query`` ``[..., D]``; the padding id 0 gets ``-inf``."""
        scores = query @ (self.item_embeddings if items is None else items).T
        scores[..., 0] = float("-inf")
        return scores

    def score(self, item_seq: torch.Tensor, item_len: torch.Tensor, edit: HeadEdit | None = None) -> torch.Tensor:
        """Full-catalogue scores ``[B, n_items]`` with an optional head edit."""
        return self.logits(self.head(self.user_state(item_seq, item_len), edit))


@torch.inference_mode()
def score_with_edit(
    model: EditableSeqRec, item_seq: torch.Tensor, item_len: torch.Tensor, edit: HeadEdit | None = None
) -> torch.Tensor:
    """Device-side ranking: forward passes only, no autograd graph, dropout off."""
    was_training = model.training
    model.eval()
    try:
        return model.score(item_seq, item_len, edit)
    finally:
        model.train(was_training)
