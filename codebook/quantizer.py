"""FAISS residual quantizer: training, encoding to per-level codes, and the on-disk index."""

from __future__ import annotations

import faiss
import numpy as np

# Codes carry each item's norm (float): search then uses per-level lookup tables instead of decoding
# every item (measured 0.37 ms vs 10.4 ms per top-10 query on 12k items, same results).
SEARCH_TYPE = faiss.AdditiveQuantizer.ST_norm_float


def unpack_codes(packed: np.ndarray, levels: int, bits: int) -> np.ndarray:
    """FAISS bit-packed RQ codes (little-endian bitstream) → int64 ``[n, levels]``."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if bits == 8:
        return packed[:, :levels].astype(np.int64)
    stream = np.unpackbits(packed, axis=1, bitorder="little")[:, : levels * bits]
    weights = 1 << np.arange(bits, dtype=np.int64)
    return stream.reshape(len(packed), levels, bits).astype(np.int64) @ weights


def train_index(
    x: np.ndarray, levels: int, bits: int, beam_size: int, kmeans_iters: int, seed: int, progressive: bool = False
):
    """Train an ``IndexResidualQuantizer`` (``levels`` x ``2**bits`` codewords) on ``x``; adds nothing."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexResidualQuantizer(x.shape[1], levels, bits, faiss.METRIC_L2, SEARCH_TYPE)
    rq = index.rq
    rq.max_beam_size = beam_size
    RQ = faiss.ResidualQuantizer
    rq.train_type = RQ.Train_progressive_dim if progressive else RQ.Train_default
    rq.cp.niter = kmeans_iters
    rq.cp.seed = seed
    rq.cp.verbose = False
    # Few items per codeword is expected here (12k items, 256 codes); FAISS only warns about it.
    rq.cp.min_points_per_centroid = 1
    index.train(x)
    return index


def truncate(index, levels: int):
    """A trained index with only the first ``levels`` codebooks of ``index`` (no items added).

    Residual training is level by level, so the first m codebooks of an M-level quantizer are an
    m-level quantizer (identical to training m levels when the beam is 1).
    """
    rq = index.rq
    bits = int(rq.nbits.at(0))
    out = faiss.IndexResidualQuantizer(rq.d, levels, bits, faiss.METRIC_L2, SEARCH_TYPE)
    out.rq.max_beam_size = rq.max_beam_size
    books = faiss.vector_to_array(rq.codebooks)[: levels * (1 << bits) * rq.d]
    faiss.copy_array_to_vector(np.ascontiguousarray(books, dtype=np.float32), out.rq.codebooks)
    out.rq.is_trained = True
    out.is_trained = True
    return out


def encode(index, x: np.ndarray) -> np.ndarray:
    """Per-level codes of ``x`` under the index's quantizer → int64 ``[n, levels]``."""
    rq = index.rq
    packed = rq.compute_codes(np.ascontiguousarray(x, dtype=np.float32))
    return unpack_codes(packed, rq.M, int(rq.nbits.at(0)))


def decode(index, codes: np.ndarray) -> np.ndarray:
    """Reconstruction (sum of the chosen codewords) of per-level codes."""
    codes = np.asarray(codes, dtype=np.int64)
    books = codebooks(index)
    return np.sum([books[level][codes[:, level]] for level in range(index.rq.M)], axis=0, dtype=np.float32)


def codebooks(index) -> list[np.ndarray]:
    """The learned codewords, one ``[2**bits, d]`` matrix per level."""
    rq = index.rq
    flat = faiss.vector_to_array(rq.codebooks).reshape(-1, rq.d)
    k = 1 << int(rq.nbits.at(0))
    return [flat[level * k : (level + 1) * k] for level in range(rq.M)]
