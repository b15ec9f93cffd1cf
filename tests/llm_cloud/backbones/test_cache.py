"""The on-disk embedding cache: second run encodes nothing, keys separate backbones, errors cache nothing,
the directory stays within its bound (least recently used evicted first), even shared by processes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm_cloud.backbones import BackboneError, CachedBackbone
from llm_cloud.backbones.cache import texts_digest
from tests.llm_cloud.helpers import FailsOnBatch, Wrapped, minilm

ROOT = Path(__file__).resolve().parents[3]

TEXTS = ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)", "Copycat (1995)"]


def npy_files(path):
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix == ".npy")


def npy_bytes(emb) -> bytes:
    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    return buf.getvalue()


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


def test_texts_digest_takes_any_str():
    """A lone surrogate (JSON allows "\\ud800") has a key of its own instead of a UnicodeEncodeError."""
    keys = {texts_digest(t) for t in (["\ud800"], ["\udc00"], ["\ufffd"], ["\ud800", "a"], ["\ud800a"])}
    assert len(keys) == 5 and texts_digest(["Heat"]) == texts_digest(("Heat",))


def test_least_recently_used_entries_are_evicted(tmp_path):
    inner = Wrapped(minilm())
    backbone = CachedBackbone(inner, tmp_path, max_entries=3)
    a, b, c, d = ([t] for t in TEXTS[:4])
    for texts in (a, b, c, a):  # the last encode of a is a hit: a is now the most recently used
        backbone.encode(texts)
    assert backbone.hits == 1 and len(npy_files(tmp_path)) == 3
    backbone.encode(d)
    assert npy_files(tmp_path) == sorted(backbone.path_for(t) for t in (a, c, d))
    calls = inner.calls
    backbone.encode(b)  # evicted: encoded again, and c (now the oldest) makes room
    assert inner.calls == calls + 1 and not backbone.path_for(c).exists()


def test_eviction_goes_down_to_the_low_water_mark(tmp_path):
    backbone = CachedBackbone(Wrapped(minilm()), tmp_path, max_entries=20)
    for i in range(20):
        backbone.encode([f"item {i}"])
    assert len(npy_files(tmp_path)) == 20  # at the bound: nothing evicted
    backbone.encode(["item 20"])
    assert len(npy_files(tmp_path)) == 18  # over it: down to 90 %, so the next writes need no rescan
    assert backbone.path_for(["item 20"]).exists() and not backbone.path_for(["item 2"]).exists()


def test_byte_bound_and_entries_larger_than_it(tmp_path):
    one = len(npy_bytes(minilm().encode(TEXTS[:1])))
    backbone = CachedBackbone(Wrapped(minilm()), tmp_path, max_entries=None, max_bytes=2 * one + one // 2)
    for text in TEXTS[:4]:
        backbone.encode([text])
        assert sum(p.stat().st_size for p in npy_files(tmp_path)) <= backbone.lru.max_bytes
    assert npy_files(tmp_path) == sorted(backbone.path_for([t]) for t in TEXTS[2:4])
    emb = backbone.encode(TEXTS)  # larger than the whole cache: returned, not written
    assert emb.shape == (5, 384) and not backbone.path_for(TEXTS).exists()


def test_bound_covers_every_backbone_and_an_evicted_entry_is_a_miss(tmp_path):
    """Two wrappers over one directory stand for two processes: one evicts what the other wrote."""
    mine = CachedBackbone(Wrapped(minilm()), tmp_path)
    other = CachedBackbone(FailsOnBatch(minilm(), bad=99, batch_size=64), tmp_path, max_entries=1)
    first = mine.encode(TEXTS)
    other.encode(TEXTS[:2])  # another backbone's entry: the bound of 1 evicts `mine`'s
    assert npy_files(tmp_path) == [other.path_for(TEXTS[:2])]
    np.testing.assert_array_equal(mine.encode(TEXTS), first)
    assert (mine.hits, mine.misses) == (0, 2)


WORKER = """
import sys
import numpy as np
from llm_cloud.backbones import Backbone, CachedBackbone
from llm_cloud.backbones.cache import texts_digest

class Hashing(Backbone):
    key = "hashing:v1"
    def _encode_batch(self, texts):
        return np.stack([np.random.default_rng(int(texts_digest([t])[:8], 16)).random(8) for t in texts])

rng = np.random.default_rng(int(sys.argv[2]))
backbone, plain = CachedBackbone(Hashing(progress=False), sys.argv[1], max_entries=10), Hashing(progress=False)
for _ in range(150):  # 30 keys shared by every process: hits, misses, rewrites and evictions race
    texts = [f"text {rng.integers(30)}"]
    np.testing.assert_array_equal(backbone.encode(texts), plain.encode(texts).astype(np.float32))
print(backbone.hits, backbone.misses)
"""


def test_processes_sharing_a_bounded_cache_never_fail(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(seed)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in range(4)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
        hits, misses = map(int, out.split())
        assert hits > 0 and misses > 0
    assert len(npy_files(tmp_path)) <= 10 + 2 * len(procs)  # each counts only its own writes between scans
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp file left behind
