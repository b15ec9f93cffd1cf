"""SemanticCodebook on real all-MiniLM-L6-v2 embeddings of the ml-100k items."""

from __future__ import annotations

import json

import numpy as np
import pytest

from codebook import CodebookConfig, CodebookError, SemanticCodebook
from codebook.metrics import collision_rate, quality
from codebook.semantic import disambiguate
from tests.llm_cloud.helpers import minilm


@pytest.fixture(scope="module")
def book(items):
    return SemanticCodebook.build(items.embeddings, CodebookConfig(), item_ids=items.item_ids)


@pytest.fixture(scope="module")
def report(book, items):
    return quality(book, items.embeddings)


def test_quality_targets(report):
    assert report["n_items"] == 1682 and report["levels"] >= 3
    assert report["min_utilisation"] >= 0.8, report["per_level"]
    assert all(lv["normalised_entropy"] > 0.5 for lv in report["per_level"])  # no collapse behind utilisation
    assert report["collision_rate_learned"] <= 0.05
    assert report["collision_rate"] == 0.0  # disambiguation code: full IDs unique
    assert report["collision_rate_learned"] >= report["duplicate_vector_rate"] > 0  # identical titles collide
    assert 0 < report["reconstruction"]["relative"] < 0.6
    assert report["recall@10"] > 0.25  # chance level is ~0.006


def test_semantic_ids_align_with_items(book, items):
    ids = book.semantic_ids
    assert ids.shape == (1682, book.width) and book.width == book.levels + 1
    assert ids[:, : book.levels].max() < 256 and ids.min() >= 0
    for row in (0, 100, 1681):
        assert book.semantic_id(items.item_ids[row]) == tuple(ids[row])
    with pytest.raises(CodebookError, match="unknown item id"):
        book.semantic_id("no-such-item")


def test_hits_are_the_items_codes_and_work_for_new_text(book, items):
    np.testing.assert_array_equal(book.hits(items.embeddings[:200]), book.semantic_ids[:200, : book.levels])
    q = minilm().encode(["Recently: Star Wars (1977) | Return of the Jedi (1983)"])
    hit = book.hits(q)
    assert hit.shape == (1, book.levels)
    star_wars = items.item_ids.index("50")  # ml-100k item 50 = Star Wars
    _, rows = book.neighbours(q, 10)
    assert star_wars in rows[0]
    assert hit[0, 0] in {book.semantic_ids[r, 0] for r in rows[0]}
    with pytest.raises(CodebookError, match="dimension 10"):
        book.hits(np.zeros((1, 10), dtype=np.float32))


def test_items_with_prefix(book):
    ids = book.semantic_ids
    rows = book.items_with_prefix(ids[7, :1])
    assert 7 in rows and (ids[rows, 0] == ids[7, 0]).all()
    assert len(rows) == (ids[:, 0] == ids[7, 0]).sum()
    assert book.items_with_prefix(ids[7]).tolist() == [7]  # the full ID is unique
    assert len(book.items_with_prefix([])) == 1682
    assert [book.item_ids[i] for i in book.items_with_prefix(ids[7])] == [book.item_ids[7]]
    with pytest.raises(CodebookError, match="prefix has"):
        book.items_with_prefix([0] * (book.width + 1))


def test_save_load_roundtrip(book, items, tmp_path):
    out = book.save(tmp_path / "cb")
    assert {p.name for p in out.iterdir()} == {"index.faiss", "semantic_ids.npy", "mean.npy", "meta.json"}
    assert json.loads((out / "meta.json").read_text())["item_ids"][:2] == items.item_ids[:2]
    loaded = SemanticCodebook.load(out)
    np.testing.assert_array_equal(loaded.semantic_ids, book.semantic_ids)
    q = items.embeddings[::50]
    np.testing.assert_array_equal(loaded.hits(q), book.hits(q))
    assert quality(loaded, items.embeddings)["collision_rate"] == 0.0
    book.save(out)  # overwrite in place
    (out / "mean.npy").unlink()
    with pytest.raises(CodebookError, match="lacks mean.npy"):
        SemanticCodebook.load(out)


def test_levels_are_added_until_collisions_meet_target(items):
    cfg = CodebookConfig(levels=1, max_levels=4, bits=5, beam_size=1, kmeans_iters=10)
    small = SemanticCodebook.build(items.embeddings, cfg, item_ids=items.item_ids)
    assert small.build_log[0]["trained_levels"] == 4
    rates = [b["collision_rate"] for b in small.build_log[1:]]
    assert len(rates) >= 2 and rates[0] > 0.05 and rates == sorted(rates, reverse=True)
    assert small.levels == len(rates) and (rates[-1] <= 0.05 or small.levels == 4)
    assert quality(small, items.embeddings)["collision_rate"] == 0.0


def test_duplicates_get_distinct_disambiguation_codes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x[10] = x[20] = x[30] = x[5]
    book = SemanticCodebook.build(x, CodebookConfig(levels=2, max_levels=2, bits=4))
    learned = book.semantic_ids[:, :2]
    assert (learned[[10, 20, 30]] == learned[5]).all()
    assert sorted(book.semantic_ids[[5, 10, 20, 30], 2]) == [0, 1, 2, 3]
    assert collision_rate(book.semantic_ids) == 0.0
    assert disambiguate(np.array([[1], [2], [1], [1]])).tolist() == [0, 0, 1, 2]


def test_bad_build_input():
    with pytest.raises(CodebookError, match="at least 2 items"):
        SemanticCodebook.build(np.ones((1, 4)), CodebookConfig())
    with pytest.raises(CodebookError, match="fewer than the 256 codewords"):
        SemanticCodebook.build(np.eye(100), CodebookConfig())
    with pytest.raises(CodebookError, match="NaN"):
        SemanticCodebook.build(np.full((4, 4), np.nan), CodebookConfig())
    with pytest.raises(CodebookError, match="not unique"):
        SemanticCodebook.build(np.eye(4), CodebookConfig(bits=2, levels=1), item_ids=["a", "a", "b", "c"])
