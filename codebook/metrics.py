"""Codebook quality: utilisation, entropy/perplexity per level, collisions, reconstruction, recall@k, and
:func:`quality`, the report of a built codebook that puts them together."""

from __future__ import annotations

from typing import TYPE_CHECKING

import faiss
import numpy as np

from codebook import quantizer

if TYPE_CHECKING:
    from codebook.semantic import SemanticCodebook


def quality(book: SemanticCodebook, emb: np.ndarray) -> dict:
    """Quality report of ``book`` on item embeddings ``emb`` (the ones it was built from)."""
    x = book.transform(emb)
    codes = quantizer.encode(book.index, x)
    own = len(x) == len(book.semantic_ids)  # the build's items: report their stored IDs
    learned = book.semantic_ids[:, : book.levels] if own else codes
    levels = level_stats(learned, book.level_sizes[: book.levels])
    cfg = book.cfg
    return {
        "n_items": len(x),
        "dim": book.dim,
        "levels": book.levels,
        "bits": cfg.bits,
        "width": book.width,
        "level_sizes": book.level_sizes,
        "per_level": levels,
        "min_utilisation": min(level["utilisation"] for level in levels),
        "collision_rate_learned": collision_rate(learned),
        "collision_rate": collision_rate(book.semantic_ids if own else codes),
        "duplicate_vector_rate": collision_rate(np.round(x, 5)),
        "reconstruction": reconstruction(x, quantizer.decode(book.index, codes)),
        f"recall@{cfg.recall_k}": neighbour_recall(x, book.index, cfg.recall_k, cfg.recall_queries, cfg.seed),
        "build_log": book.build_log,
    }


def level_stats(codes: np.ndarray, sizes: list[int]) -> list[dict]:
    """Per level: share of codewords used, entropy (bits), perplexity, entropy / log2(size)."""
    out = []
    for level, size in enumerate(sizes):
        counts = np.bincount(codes[:, level], minlength=size)
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log2(p)).sum())
        out.append({
            "level": level,
            "size": int(size),
            "used": int((counts > 0).sum()),
            "utilisation": float((counts > 0).mean()),
            "entropy_bits": entropy,
            "perplexity": float(2.0**entropy),
            "normalised_entropy": entropy / np.log2(size) if size > 1 else 1.0,
        })
    return out


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full code row is shared with at least one other item."""
    if len(codes) == 0:
        return 0.0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())


def reconstruction(x: np.ndarray, x_hat: np.ndarray) -> dict:
    err = ((x - x_hat) ** 2).sum(1)
    return {"mse": float(err.mean()), "relative": float(err.sum() / max((x**2).sum(), 1e-12))}


def neighbour_recall(x: np.ndarray, index, k: int, n_queries: int, seed: int) -> float:
    """Recall@k of the index's (codebook-decoded) neighbours against exact L2 neighbours, self excluded."""
    n = len(x)
    if n <= k:
        return float("nan")
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    _, exact = flat.search(x[q], k + 1)
    _, approx = index.search(x[q], k + 1)
    hits = 0
    for row, e, a in zip(q, exact, approx, strict=True):
        e = [i for i in e if i != row][:k]
        a = [i for i in a if i != row][:k]
        hits += len(set(e) & set(a))
    return hits / (len(q) * k)
