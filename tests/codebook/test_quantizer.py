"""codebook.quantizer: FAISS residual quantizer codes unpacked at every width, decoded, and truncated to a prefix."""

from __future__ import annotations

import numpy as np
import pytest

from codebook import CodebookConfig, SemanticCodebook, quantizer


@pytest.mark.parametrize("bits", [4, 6, 8, 10])
def test_unpacking_matches_faiss_decode(bits):
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    index = quantizer.train_index(x, 3, bits, beam_size=2, kmeans_iters=5, seed=0)
    packed = index.rq.compute_codes(x[:50])
    codes = quantizer.encode(index, x[:50])
    assert codes.max() < (1 << bits)
    np.testing.assert_allclose(quantizer.decode(index, codes), index.rq.decode(packed), atol=1e-5)


def test_truncated_quantizer_is_the_prefix(items):
    x = SemanticCodebook.build(items.embeddings[:400], CodebookConfig(levels=1, max_levels=1, bits=4)).transform(
        items.embeddings[:400])
    full = quantizer.train_index(x, 3, 5, beam_size=1, kmeans_iters=10, seed=0)
    two = quantizer.truncate(full, 2)
    np.testing.assert_array_equal(quantizer.encode(two, x), quantizer.encode(full, x)[:, :2])
    alone = quantizer.train_index(x, 2, 5, beam_size=1, kmeans_iters=10, seed=0)  # trained with 2 levels only
    np.testing.assert_allclose(quantizer.codebooks(alone)[1], quantizer.codebooks(two)[1], atol=1e-5)


def test_codebooks_are_one_matrix_per_level_and_decode_sums_the_chosen_codewords():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    index = quantizer.train_index(x, 2, 4, beam_size=1, kmeans_iters=5, seed=0)
    books = quantizer.codebooks(index)
    assert [b.shape for b in books] == [(16, 6), (16, 6)]
    codes = quantizer.encode(index, x[:20])
    np.testing.assert_allclose(quantizer.decode(index, codes), books[0][codes[:, 0]] + books[1][codes[:, 1]], atol=1e-6)
    err = ((quantizer.decode(index, codes) - x[:20]) ** 2).sum(1).mean()
    assert err < (x[:20] ** 2).sum(1).mean()  # the residual levels reconstruct better than nothing


def test_unpack_codes_reads_the_little_endian_bitstream():
    # two 4-bit codes 0x3 and 0xA packed little-endian into one byte: 0xA3; 6-bit codes 5 and 33 over two bytes
    assert quantizer.unpack_codes(np.array([[0xA3]], dtype=np.uint8), 2, 4).tolist() == [[3, 10]]
    assert quantizer.unpack_codes(np.array([[5 | (33 & 3) << 6, 33 >> 2]], dtype=np.uint8), 2, 6).tolist() == [[5, 33]]
