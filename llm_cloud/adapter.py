"""The Persona adapter: a device's real-time window → per-layer codes → head edits, one forward pass.

``window items (+ their semantic codes) → GRU → z`` (with the device model's user state ``h`` and, with
``use_context``, the codebook hits of the LLM encoding of the user's context: per-level embeddings,
summed, projected into the mix; :mod:`llm_cloud.context_hits`). With ``semantic_main`` (SOLID) the
semantic path — context hits + the window's semantic codes — gives the main code and the ID path
(item-id GRU + ``h``) a residual scaled by a learned gate (starting at 0.1). Then
per-layer codes ``z_1 … z_L``: with ``cross_layer`` a stacked recurrent net (``z_l = GRUCell_l(z,
z_{l-1})``) so each layer's edit is conditioned on the lower layers'; without it, independent maps.
Registered projections turn ``z_l`` into ``ΔW_l`` (full rank, or ``U_l V_l`` of rank r) and ``Δb_l``;
they start at zero, so an untrained adapter leaves the base head unchanged. With ``anchor=False``
(the DUET-style baseline) the projections generate the head outright and the base head is unused.
"""

from __future__ import annotations

import torch
from torch import nn

from llm_cloud.adapter_config import AdapterConfig
from recsys.models import EditableSeqRec, HeadEdit

NO_CLIP = 1e6


def left_padded_windows(seq: torch.Tensor, end: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, n]`` windows of ``seq`` (right-padded ``[B, T]``) ending before ``end`` (exclusive), left-padded."""
    idx = end.view(-1, 1) - n + torch.arange(n, device=seq.device).view(1, -1)
    valid = idx >= 0
    out = seq.gather(1, idx.clamp(min=0))
    return out * valid


class Adapter(nn.Module):
    """Hypernetwork from a device's window (+ semantic codes, + user state, + user-context hits) to head edits."""

    def __init__(
        self,
        cfg: AdapterConfig,
        n_items: int,
        dim: int,
        n_layers: int,
        code_sizes: list[int] | None = None,
        item_init: torch.Tensor | None = None,
        context_sizes: list[int] | None = None,
    ):
        super().__init__()
        if cfg.semantic_main and not cfg.use_context:
            raise ValueError("semantic_main needs use_context")
        self.cfg, self.dim, self.n_layers = cfg, dim, n_layers
        dz = cfg.code_dim
        self.item_emb = nn.Embedding(n_items, dim, padding_idx=0)
        if item_init is not None:
            self.item_emb.weight.data.copy_(item_init)
        self.item_emb.weight.requires_grad_(cfg.train_item_emb)
        self.drop = nn.Dropout(cfg.dropout)
        self.code_sizes = list(code_sizes or []) if cfg.use_codebook else []
        self.code_embs = nn.ModuleList(nn.Embedding(size + 1, dim, padding_idx=0) for size in self.code_sizes)
        self.context_sizes = list(context_sizes or []) if cfg.use_context else []
        if cfg.use_context and not self.context_sizes:
            raise ValueError("use_context needs the codebook's level sizes (context_sizes)")
        self.context_embs = nn.ModuleList(nn.Embedding(size + 1, dim, padding_idx=0) for size in self.context_sizes)
        self.context_proj = nn.Linear(dim, dz) if self.context_sizes else None
        self.gru = nn.GRU(dim, dz, batch_first=True)
        self.state_proj = nn.Linear(dim, dz) if cfg.use_state else None
        n_in = 1 + cfg.use_state + (cfg.use_context and not cfg.semantic_main)
        self.mix = nn.Sequential(nn.Linear(dz * n_in, dz), nn.Tanh(), nn.Linear(dz, dz))
        if cfg.semantic_main:  # the semantic path's own mix; the ID path's (self.mix) is its gated residual
            self.semantic_mix = nn.Sequential(nn.Linear(dz * 2, dz), nn.Tanh(), nn.Linear(dz, dz))
            self.semantic_window = nn.Linear(dim, dz)
            self.id_gate = nn.Parameter(torch.tensor(0.1))
        if cfg.cross_layer:
            self.layer_cells = nn.ModuleList(nn.GRUCell(dz, dz) for _ in range(n_layers))
        else:
            self.layer_maps = nn.ModuleList(nn.Linear(dz, dz) for _ in range(n_layers))
        out_w = dim * dim if cfg.rank == 0 else dim * cfg.rank
        self.proj_w = nn.ModuleList(nn.Linear(dz, out_w) for _ in range(n_layers))
        self.proj_v = nn.ModuleList(nn.Linear(dz, cfg.rank * dim) for _ in range(n_layers)) if cfg.rank else None
        self.proj_b = nn.ModuleList(nn.Linear(dz, dim) for _ in range(n_layers))
        if cfg.anchor:  # start from "no edit"
            for lin in [*self.proj_w, *self.proj_b]:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        else:
            for lin in [*self.proj_w, *self.proj_b]:
                nn.init.normal_(lin.weight, std=0.01)
                nn.init.zeros_(lin.bias)

    def sequence_code(
        self,
        window: torch.Tensor,
        codes: torch.Tensor | None,
        state: torch.Tensor | None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``z`` ``[B, dz]`` from a left-padded window ``[B, N]``, its codes ``[B, N, levels]``, ``h`` and the
        user-context hits ``[B, levels]`` (+1; 0 = none)."""
        x = self.item_emb(window)
        sem = None
        if self.code_sizes and codes is not None:
            sem = sum(emb(codes[..., level]) for level, emb in enumerate(self.code_embs))
            if not self.cfg.semantic_main:
                x = x + sem
        out, _ = self.gru(self.drop(x))
        parts = [out[:, -1]]
        if self.state_proj is not None:
            parts.append(torch.tanh(self.state_proj(state)))
        ctx = None
        if self.context_sizes:
            if context is None:
                raise ValueError("this adapter reads user-context hits; pass context=")
            ctx = torch.tanh(self.context_proj(sum(emb(context[:, lv]) for lv, emb in enumerate(self.context_embs))))
            if not self.cfg.semantic_main:
                parts.append(ctx)
        z_id = self.mix(self.drop(torch.cat(parts, dim=-1)))
        if not self.cfg.semantic_main:
            return z_id
        valid = (window > 0).unsqueeze(-1).float()
        sem_win = (sem * valid).sum(1) / valid.sum(1).clamp(min=1) if sem is not None else torch.zeros_like(x[:, 0])
        z_sem = self.semantic_mix(self.drop(torch.cat([ctx, torch.tanh(self.semantic_window(sem_win))], dim=-1)))
        return z_sem + self.id_gate * z_id

    def layer_codes(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, L, dz]``: per-layer codes (layer-major when flattened)."""
        if self.cfg.cross_layer:
            h, out = torch.zeros_like(z), []
            for cell in self.layer_cells:
                h = cell(z, h)
                out.append(h)
        else:
            out = [torch.tanh(m(z)) for m in self.layer_maps]
        return torch.stack(out, dim=1)

    def edits_from_codes(self, codes: torch.Tensor, base: EditableSeqRec | None = None) -> HeadEdit:
        """Head edit from per-layer codes ``[B, L, dz]``."""
        b, d = codes.size(0), self.dim
        dws, dbs = [], []
        for layer in range(self.n_layers):
            zl = codes[:, layer]
            if self.cfg.rank == 0:
                dw = self.proj_w[layer](zl).view(b, d, d)
            else:
                u = self.proj_w[layer](zl).view(b, d, self.cfg.rank)
                v = self.proj_v[layer](zl).view(b, self.cfg.rank, d)
                dw = u @ v
            db = self.proj_b[layer](zl)
            if not self.cfg.anchor:  # generated outright: express it as an (unclipped) edit of the base
                w0, b0 = base.head.anchors()[layer]
                dw, db = dw - w0.detach(), db - b0.detach()
            dws.append(dw)
            dbs.append(db)
        return HeadEdit(dws, dbs, clip=self.cfg.clip if self.cfg.anchor else NO_CLIP)

    def forward(
        self,
        window: torch.Tensor,
        codes: torch.Tensor | None,
        state: torch.Tensor | None,
        base: EditableSeqRec | None = None,
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, HeadEdit]:
        layer_codes = self.layer_codes(self.sequence_code(window, codes, state, context))
        return layer_codes, self.edits_from_codes(layer_codes, base)


def edited_logits(base: EditableSeqRec, state: torch.Tensor, edit: HeadEdit | None) -> torch.Tensor:
    """Scores of all items for user states ``h`` under an edit of the (frozen) base head."""
    return base.logits(base.head(state, edit))
