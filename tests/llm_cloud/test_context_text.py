"""Item and user context on real dataset tables; image fusion on amazon-scientific's shipped features."""

from __future__ import annotations

import numpy as np
import pytest

from llm_cloud.context_text import ContextConfig, ContextError, fuse_image, item_texts, render, user_context
from recsys.config import DataConfig, load_config
from recsys.datasets import prepare, read_arrays, read_items
from tests.conftest import has_mirror, needs_mirror
from tests.llm_cloud.helpers import minilm


def _texts(dataset: str, workdir, n: int | None = None) -> dict[str, str]:
    """Item id → context text, with the dataset's template from its config layer."""
    data = load_config(overrides=[f"dataset={dataset}", f"data.workdir={workdir}"]).data
    items = read_items(prepare(dataset, data), dataset).iloc[:n]
    return dict(zip(items["item_id"], item_texts(items, data.text_template, ContextConfig())))


def test_ml100k_item_texts(workdir):
    items = read_items(prepare("ml-100k", DataConfig(workdir=str(workdir))), "ml-100k")
    texts = list(_texts("ml-100k", workdir).values())
    assert len(texts) == len(items) and all(t.strip() for t in texts)
    assert texts[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    no_year = items.index[items["release_year"] == ""]  # the mirror's u.item has one; recbole's copy none
    if len(no_year):
        assert "()" not in texts[no_year[0]]  # the optional segment is dropped


def test_dataset_templates_render_the_texts_they_rendered_in_code(workdir):
    """The templates moved from llm_cloud.context_text into configs/datasets/: the same bytes as before (these strings
    come from the old in-code templates; all 25,110 texts of the four datasets were compared when moving them)."""
    texts = _texts("ml-100k", workdir)
    assert texts["1"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert texts["50"] == "Star Wars (1977). Genres: Action, Adventure, Romance, Sci-Fi, War."
    if has_mirror():
        movies = _texts("ml-latest-small", workdir, 8)
        assert movies["1"] == ("Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy. "
                               "Tags: pixar, fun.")  # fmt: skip
        assert movies["4"] == "Waiting to Exhale (1995). Genres: Comedy, Drama, Romance."  # no tags: segment dropped


def test_render_and_fallbacks():
    assert render("{title}.[ Tags: {tags}.]", {"title": "Heat", "tags": ""}) == "Heat."
    assert render("{title}.[ Tags: {tags}.]", {"title": "Heat", "tags": "heist"}) == "Heat. Tags: heist."
    with pytest.raises(ContextError, match="'brand' is not an item column"):
        render("{brand}", {"title": "x"})
    import pandas as pd

    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["Heat", ""]})
    assert item_texts(items, None, ContextConfig()) == ["title: Heat.", "item b"]  # a dataset without a template


def test_user_context_most_recent_first():
    cfg = ContextConfig(user_max_items=2)
    assert user_context(["old", "mid", "new"], cfg) == "Recently: new | mid"
    with pytest.raises(ContextError):
        user_context(["", " "], cfg)


def test_fusion_cosine_is_weighted_mix():
    rng = np.random.default_rng(0)
    t, i = rng.normal(size=(4, 6)), rng.normal(size=(4, 5)) * 10
    fused = fuse_image(t, i, 0.3)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-6)
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)
    expect = 0.7 * unit(t) @ unit(t).T + 0.3 * unit(i) @ unit(i).T
    np.testing.assert_allclose(fused @ fused.T, expect, atol=1e-5)
    with pytest.raises(ContextError, match="3 text embeddings but 4"):
        fuse_image(t[:3], i, 0.3)


@needs_mirror
def test_amazon_scientific_text_and_image(workdir):
    out = prepare("amazon-scientific", DataConfig(workdir=str(workdir)))
    items = read_items(out, "amazon-scientific")
    image = read_arrays(out)["image_features"]
    assert image.shape == (len(items), 512)
    texts = list(_texts("amazon-scientific", workdir, 16).values())
    fused = fuse_image(minilm().encode(texts), image[:16], 0.3)
    assert fused.shape == (16, 384 + 512) and np.isfinite(fused).all()
