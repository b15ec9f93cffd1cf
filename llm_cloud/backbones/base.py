"""The backbone interface: ``encode(texts) -> float32 [n, d]``, batched, with progress on long runs."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


class BackboneError(RuntimeError):
    """A backbone could not produce embeddings (bad input, missing model, server error...)."""


def check_texts(texts: Sequence[str]) -> list[str]:
    """Texts as a list; an empty or non-string text is an error naming its position."""
    if isinstance(texts, str):
        raise BackboneError("texts must be a list of strings, not one string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise BackboneError(f"text {i} is {type(text).__name__}, not str")
        if not text.strip():
            raise BackboneError(f"text {i} is empty")
    return out


def check_embeddings(emb: np.ndarray, n: int, dim: int | None, source: str) -> np.ndarray:
    """Shape, width and finiteness check; returns a C-contiguous float32 copy."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise BackboneError(f"{source}: expected {n} embeddings, got array of shape {emb.shape}")
    if dim is not None and emb.shape[1] != dim:
        raise BackboneError(f"{source}: wrong embedding dimension {emb.shape[1]}, expected {dim}")
    if not np.isfinite(emb).all():
        raise BackboneError(f"{source}: embeddings contain NaN or inf")
    return emb


def model_fingerprint(path: Path, chunk: int = 1 << 20) -> str:
    """Short content hash of a model file or directory (size, head and tail of each file).

    Reads at most 2 MiB per file, so it is cheap on large weights yet tells two checkpoints apart.
    """
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        size = p.stat().st_size
        h.update(f"{p.relative_to(path) if p != path else p.name}:{size}".encode())
        with open(p, "rb") as f:
            h.update(f.read(chunk))
            if size > 2 * chunk:
                f.seek(size - chunk)
                h.update(f.read(chunk))
    return h.hexdigest()[:16]


class Backbone(ABC):
    """Turns texts into float32 embeddings. Subclasses implement :meth:`_encode_batch`."""

    name: str = "backbone"
    tokenizer = None  # the Hugging Face tokenizer of a local model (decodes token-id input), else None

    def __init__(self, batch_size: int = 64, progress: bool = True):
        self.batch_size = batch_size
        self.progress = progress

    @property
    @abstractmethod
    def key(self) -> str:
        """Identity of the backbone's output (model, pooling, prefix...): part of the cache key."""

    @property
    def dim(self) -> int | None:
        """Embedding width when known before encoding, else None."""
        return None

    def decode_tokens(self, token_ids: Sequence[Sequence[int]]) -> list[str]:
        """Texts of token-id sequences (OpenAI's token input) with :attr:`tokenizer`, special tokens dropped."""
        tok = self.tokenizer
        if tok is None:
            raise BackboneError(f"backbone {self.name} has no tokenizer: send text")
        vocab = len(tok)
        for i, ids in enumerate(token_ids):
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise BackboneError(f"token sequence {i} has token id {bad}, outside the vocabulary [0, {vocab})")
        return tok.batch_decode([list(ids) for ids in token_ids], skip_special_tokens=True)

    @abstractmethod
    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """Encode one batch of non-empty texts → [len(texts), d]."""

    def _batches(self, texts: list[str]) -> list[list[str]]:
        return [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` as float32 ``[n, d]`` (rows in input order)."""
        texts = check_texts(texts)
        if not texts:
            raise BackboneError("no texts to encode")
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths batched: less padding
        batches = self._batches([texts[i] for i in order])
        show = self.progress and len(batches) > 1
        parts = [
            check_embeddings(self._encode_batch(b), len(b), self.dim, self.name)
            for b in tqdm(batches, desc=f"encode[{self.name}]", disable=not show)
        ]
        if len({p.shape[1] for p in parts}) > 1:
            raise BackboneError(f"{self.name}: batches returned different embedding widths")
        out = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(parts, axis=0)
        return out
