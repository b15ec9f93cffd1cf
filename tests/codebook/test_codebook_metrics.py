"""codebook.metrics: per-level utilisation and entropy, collisions, reconstruction, neighbour recall, and the quality
report of a built codebook."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from codebook import CodebookConfig, SemanticCodebook
from codebook.metrics import collision_rate, level_stats, neighbour_recall, quality, reconstruction


def test_level_stats_entropy():
    codes = np.array([[0], [1], [2], [3]])
    (stats,) = level_stats(codes, [8])
    assert stats["utilisation"] == 0.5 and stats["entropy_bits"] == pytest.approx(2.0)
    assert stats["perplexity"] == pytest.approx(4.0)
    assert faiss.__version__


def test_level_stats_of_a_uniform_and_a_collapsed_level():
    codes = np.array([[0, 5], [1, 5], [2, 5], [3, 5]])
    uniform, collapsed = level_stats(codes, [4, 8])
    assert (uniform["used"], uniform["utilisation"], uniform["normalised_entropy"]) == (4, 1.0, pytest.approx(1.0))
    assert (collapsed["used"], collapsed["entropy_bits"], collapsed["perplexity"]) == (1, 0.0, 1.0)


def test_collision_rate_counts_every_item_whose_full_code_is_shared():
    assert collision_rate(np.array([[1, 2], [1, 2], [1, 3], [2, 2]])) == 0.5
    assert collision_rate(np.array([[1, 2], [1, 3]])) == 0.0
    assert collision_rate(np.zeros((0, 2), dtype=np.int64)) == 0.0


def test_reconstruction_error_absolute_and_relative():
    x = np.array([[3.0, 4.0], [0.0, 1.0]])
    out = reconstruction(x, np.array([[3.0, 3.0], [0.0, 1.0]]))
    assert out == {"mse": 0.5, "relative": pytest.approx(1 / 26)}


def test_neighbour_recall_is_one_for_an_exact_index_and_nan_without_enough_items():
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    exact = faiss.IndexFlatL2(8)
    exact.add(x)
    assert neighbour_recall(x, exact, k=5, n_queries=50, seed=0) == 1.0
    coarse = faiss.IndexFlatL2(8)
    coarse.add(np.round(x))  # a lossy copy of the items: fewer true neighbours found
    assert neighbour_recall(x, coarse, k=5, n_queries=50, seed=0) < 1.0
    assert np.isnan(neighbour_recall(x[:5], exact, k=5, n_queries=50, seed=0))


def test_quality_report_of_a_small_codebook():
    x = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    x[7] = x[3]  # one pair of identical embeddings
    book = SemanticCodebook.build(x, CodebookConfig(levels=2, max_levels=2, bits=4, recall_k=5, recall_queries=50))
    report = quality(book, x)
    assert (report["n_items"], report["levels"], report["width"]) == (300, 2, book.width)
    assert report["collision_rate"] == 0.0 <= report["duplicate_vector_rate"] == pytest.approx(2 / 300)
    assert report["collision_rate_learned"] >= report["duplicate_vector_rate"]
    assert len(report["per_level"]) == 2 and 0 < report["recall@5"] <= 1
    assert 0 < report["reconstruction"]["relative"] < 1
