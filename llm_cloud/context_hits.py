"""Codebook hits of a device's user context, the same in training, evaluation and the cloud service.

The user-context encoding of a window is the L2-normalised mean of the LLM embeddings of its last
``n_recent`` items — the per-item text encodings ``persona codebook`` caches in
``item_embeddings.npy`` — and its hits are the codebook's nearest codeword per level
(:meth:`codebook.SemanticCodebook.hits`). Composing cached item encodings keeps it one FAISS call
per batch; re-encoding the concatenated context text with the backbone costs a backbone forward
per window (``benchmarks/context_edit_cost.py`` measures both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from codebook import SemanticCodebook
from recsys.item_side import rows_for, take_rows


class UserContextHits:
    """``window [B, N] → hits [B, levels]`` (codes +1; 0 = a window with no item the codebook knows)."""

    def __init__(self, book: SemanticCodebook, item_emb: torch.Tensor, n_recent: int):
        self.book, self.n_recent = book, n_recent
        self.item_emb = item_emb.float()  # [n_recent, d] per internal item id; zero rows = unknown / padding
        self.level_sizes = [int(s) for s in book.level_sizes[: book.levels]]

    @classmethod
    def from_codebook(
        cls, book: SemanticCodebook, embeddings: np.ndarray, item_tokens: np.ndarray, n_recent: int
    ) -> UserContextHits:
        """Rows of ``embeddings`` (aligned with ``book.item_ids``) re-indexed by internal item id."""
        table = take_rows(np.asarray(embeddings, dtype=np.float32), rows_for(item_tokens, book.item_ids))
        return cls(book, torch.from_numpy(table), n_recent)

    def encode(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """User-context encodings ``[B, d]`` (unit norm) and which rows have any known item ``[B]``."""
        recent = window[:, -self.n_recent :].to(self.item_emb.device)
        emb = self.item_emb[recent]  # left-padded windows: the last columns are the most recent items
        known = emb.abs().sum(-1) > 0
        mean = emb.sum(1) / known.sum(1, keepdim=True).clamp(min=1)
        return torch.nn.functional.normalize(mean, dim=-1), known.any(1)

    @torch.no_grad()
    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        enc, any_known = self.encode(window)
        hits = torch.zeros(len(window), len(self.level_sizes), dtype=torch.long)
        if bool(any_known.any()):
            codes = self.book.hits(enc[any_known].cpu().numpy())[:, : len(self.level_sizes)]
            hits[any_known.cpu()] = torch.from_numpy(codes.astype(np.int64)) + 1
        return hits.to(window.device)

    def to(self, device) -> UserContextHits:
        self.item_emb = self.item_emb.to(device)
        return self

    def save(self, directory: Path) -> None:
        """``context_items.pt`` (internal-id item embeddings, ``n_recent``) + ``context_codebook/``."""
        from recsys.atomic_io import atomic_torch_save

        directory = Path(directory)
        self.book.save(directory / "context_codebook")
        atomic_torch_save({"emb": self.item_emb.cpu(), "n_recent": self.n_recent}, directory / "context_items.pt")

    @classmethod
    def load(cls, directory: Path) -> UserContextHits | None:
        path = Path(directory) / "context_items.pt"
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return cls(SemanticCodebook.load(Path(directory) / "context_codebook"), saved["emb"], int(saved["n_recent"]))
