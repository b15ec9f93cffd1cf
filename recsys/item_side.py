"""Item side knowledge for the device model, passed in as data (``recsys`` imports nothing above it).

A side file (``item_side.npz``) holds, per item token, an LLM embedding (``vectors``) and optionally
its semantic ID (``codes``); ``persona codebook`` writes one beside the codebook. The model sees it as

* ``vectors``: the LLM embeddings centred and reduced to ``side_dims`` whitened principal components,
  fitted on the items that have training-period interactions only (then applied to every item);
* ``codes``: semantic codes + 1 per level (0 = padding / no code);
* ``seen``: whether the item has training-period interactions. An unseen item's ID embedding was
  never trained (a full softmax only pushes it down), so the side views score it on their own.

Rows are aligned with the dataset's internal item ids; the padding id 0 gets zeros.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recsys import run_layout
from recsys.atomic_io import atomic_write_bytes

SIDE_FILE = run_layout.ITEM_SIDE_FILE


class ItemSideError(ValueError):
    pass


@dataclass
class ItemSide:
    vectors: torch.Tensor  # [n_items, k] float32 whitened LLM view
    codes: torch.Tensor | None  # [n_items, levels] int64 semantic codes + 1
    seen: torch.Tensor  # [n_items] bool

    @property
    def code_sizes(self) -> list[int]:
        return [] if self.codes is None else [int(self.codes[:, i].max()) for i in range(self.codes.size(1))]


def rows_for(item_tokens: np.ndarray, item_ids) -> np.ndarray:
    """Row of each internal item id's token in ``item_ids`` (a per-item artifact's order); -1 for the
    padding id 0 and for tokens the artifact lacks."""
    row = {str(t): i for i, t in enumerate(item_ids)}
    return np.array([row.get(str(t), -1) if i > 0 else -1 for i, t in enumerate(item_tokens)], dtype=np.int64)


def take_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` (rows from :func:`rows_for`), zeros where ``rows`` is -1."""
    out = np.zeros((len(rows), *values.shape[1:]), dtype=values.dtype)
    out[rows >= 0] = values[rows[rows >= 0]]
    return out


def save_item_side(path: Path, item_ids: list[str], vectors: np.ndarray, codes: np.ndarray | None = None) -> Path:
    """Write a side file (atomically): item tokens, their LLM embeddings and semantic codes."""
    if len(item_ids) != len(vectors) or (codes is not None and len(codes) != len(item_ids)):
        n_codes = None if codes is None else len(codes)
        raise ItemSideError(f"{len(item_ids)} item ids, {len(vectors)} vectors, {n_codes} codes")
    buf = io.BytesIO()
    arrays = {"item_ids": np.asarray(item_ids, dtype=str), "vectors": np.asarray(vectors, dtype=np.float32)}
    if codes is not None:
        arrays["codes"] = np.asarray(codes, dtype=np.int64)
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def whiten(x: np.ndarray, fit_rows: np.ndarray, k: int) -> np.ndarray:
    """Centre ``x`` and project it on the top-``k`` principal components of ``x[fit_rows]``, each scaled
    to unit variance there (so no direction dominates by the LLM's anisotropy)."""
    fit = x[fit_rows].astype(np.float64)
    mean = fit.mean(0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    k = min(k, len(s))
    scale = s[:k] / np.sqrt(max(len(fit) - 1, 1))
    return ((x - mean) @ vt[:k].T / np.maximum(scale, 1e-8)).astype(np.float32)


def load_item_side(path: Path, item_tokens: np.ndarray, train_counts: np.ndarray, dims: int) -> ItemSide:
    """The side views of the dataset's items (internal ids ↔ ``item_tokens``), from a side file."""
    path = Path(path)
    if not path.is_file():
        raise ItemSideError(f"no item side file {path}: run `persona codebook` first (or model_params.item_side=none)")
    with np.load(path, allow_pickle=False) as z:
        ids, vectors = z["item_ids"], z["vectors"]
        codes = z["codes"] if "codes" in z else None
    n = len(item_tokens)
    rows = rows_for(item_tokens, ids)
    known = rows >= 0
    if known.sum() < 0.5 * (n - 1):
        raise ItemSideError(f"{path} covers {int(known.sum())} of {n - 1} items: built for another dataset?")
    seen = (np.asarray(train_counts) > 0) & known
    seen[0] = False
    white = whiten(take_rows(vectors.astype(np.float32), rows), np.flatnonzero(seen), dims)
    white[~known] = 0.0
    table = None if codes is None else take_rows(codes.astype(np.int64) + 1, rows)
    return ItemSide(
        torch.from_numpy(white),
        None if table is None else torch.from_numpy(table),
        torch.from_numpy(seen),
    )
