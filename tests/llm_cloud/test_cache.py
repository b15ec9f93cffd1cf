"""The on-disk embedding cache: second run encodes nothing, keys separate backbones, errors cache nothing."""

from __future__ import annotations

import numpy as np
import pytest

from llm_cloud.backbones import BackboneError, CachedBackbone
from tests.llm_cloud.helpers import FailsOnBatch, Wrapped, minilm

TEXTS = ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)", "Copycat (1995)"]


def npy_files(path):
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix == ".npy")


def test_second_run_encodes_nothing(tmp_path):
    inner = Wrapped(minilm(), batch_size=2)
    first = CachedBackbone(inner, tmp_path).encode(TEXTS)
    calls = inner.calls
    assert calls == 3 and len(npy_files(tmp_path)) == 1
    again = CachedBackbone(inner, tmp_path)  # a new process would build a new wrapper over the same dir
    np.testing.assert_array_equal(again.encode(TEXTS), first)
    assert inner.calls == calls and again.hits == 1 and again.misses == 0
    again.encode(TEXTS[:4])  # different content → a different entry
    assert inner.calls > calls and len(npy_files(tmp_path)) == 2


def test_backbone_identity_is_part_of_the_key(tmp_path):
    a = CachedBackbone(Wrapped(minilm()), tmp_path)
    b = CachedBackbone(FailsOnBatch(minilm(), bad=99, batch_size=64), tmp_path)
    a.encode(TEXTS)
    b.encode(TEXTS)
    assert a.dir != b.dir and b.misses == 1


@pytest.mark.parametrize("texts,msg", [(TEXTS + [""], "text 5 is empty"), (TEXTS * 3, "batch 2 failed")])
def test_errors_cache_nothing(tmp_path, texts, msg):
    backbone = CachedBackbone(FailsOnBatch(minilm(), bad=2, batch_size=4), tmp_path)
    with pytest.raises(BackboneError, match=msg):
        backbone.encode(texts)
    assert npy_files(tmp_path) == [] and not list(tmp_path.rglob(".tmp-*"))


def test_corrupt_or_mismatched_entry_is_re_encoded(tmp_path):
    backbone = CachedBackbone(Wrapped(minilm()), tmp_path)
    good = backbone.encode(TEXTS)
    path = backbone.path_for(TEXTS)
    np.save(path, np.zeros((2, 384), dtype=np.float32))  # wrong row count: not trusted
    np.testing.assert_allclose(backbone.encode(TEXTS), good, atol=1e-6)
    assert backbone.misses == 2
