"""FAISS residual quantizer: training, encoding to per-level codes, and the on-disk index."""

from __future__ import annotations

import faiss
import numpy as np


def unpack_codes(packed: np.ndarray, levels: int, bits: int) -> np.ndarray:
    """FAISS bit-packed RQ codes (little-endian bitstream) → int64 ``[n, levels]``."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if bits == 8:
        return packed[:, :levels].astype(np.int64)
    stream = np.unpackbits(packed, axis=1, bitorder="little")[:, : levels * bits]
    weights = 1 << np.arange(bits, dtype=np.int64)
    return stream.reshape(len(packed), levels, bits).astype(np.int64) @ weights


def train_index(x: np.ndarray, levels: int, bits: int, beam_size: int, kmeans_iters: int, seed: int):
    """Train an ``IndexResidualQuantizer`` on ``x`` and add ``x`` (its codes = the items' semantic codes)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexResidualQuantizer(x.shape[1], levels, bits, faiss.METRIC_L2)
    rq = index.rq
    rq.max_beam_size = beam_size
    rq.cp.niter = kmeans_iters
    rq.cp.seed = seed
    rq.cp.verbose = False
    # Few items per codeword is expected here (12k items, 256 codes); FAISS only warns about it.
    rq.cp.min_points_per_centroid = 1
    index.train(x)
    index.add(x)
    return index


def encode(index, x: np.ndarray) -> np.ndarray:
    """Per-level codes of ``x`` under the index's quantizer → int64 ``[n, levels]``."""
    rq = index.rq
    packed = rq.compute_codes(np.ascontiguousarray(x, dtype=np.float32))
    return unpack_codes(packed, rq.M, int(rq.nbits[0]))


def decode(index, codes: np.ndarray) -> np.ndarray:
    """Reconstruction (sum of the chosen codewords) of per-level codes."""
    codes = np.asarray(codes, dtype=np.int64)
    books = codebooks(index)
    return np.sum([books[level][codes[:, level]] for level in range(index.rq.M)], axis=0, dtype=np.float32)


def codebooks(index) -> list[np.ndarray]:
    """The learned codewords, one ``[2**bits, d]`` matrix per level."""
    rq = index.rq
    flat = faiss.vector_to_array(rq.codebooks).reshape(-1, rq.d)
    k = 1 << int(rq.nbits[0])
    return [flat[level * k : (level + 1) * k] for level in range(rq.M)]
