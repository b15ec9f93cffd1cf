"""Codebook quality: utilisation, entropy/perplexity per level, collisions, reconstruction, recall@k."""

from __future__ import annotations

import faiss
import numpy as np


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
