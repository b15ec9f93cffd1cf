"""On-disk embedding cache: ``<cache_dir>/<backbone-slug>/<sha256 of texts>.npy``.

The slug holds the backbone's name plus a hash of its full identity (:attr:`Backbone.key`), so a
different model, pooling, prefix or server never reads another's vectors. Files are written to a
temp name and renamed (atomic), only after the whole list encoded and passed the checks, so an
error leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llm_cloud.backbones.base import Backbone, check_embeddings, check_texts
from recsys.atomic_io import atomic_write_bytes


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def backbone_slug(key: str) -> str:
    name = key.split(":", 1)[0]
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class CachedBackbone(Backbone):
    """Wraps a backbone; ``encode`` returns cached vectors for a list of texts seen before."""

    def __init__(self, inner: Backbone, cache_dir: str | Path):
        super().__init__(inner.batch_size, inner.progress)
        self.inner = inner
        self.name = inner.name
        self.dir = Path(cache_dir) / backbone_slug(inner.key)
        self.hits = 0
        self.misses = 0

    @property
    def key(self) -> str:
        return self.inner.key

    @property
    def dim(self) -> int | None:
        return self.inner.dim

    @property
    def tokenizer(self):
        return self.inner.tokenizer

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.inner._encode_batch(texts)

    def path_for(self, texts: Sequence[str]) -> Path:
        return self.dir / f"{texts_digest(texts)}.npy"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        path = self.path_for(texts)
        if path.is_file():
            emb = np.load(path, allow_pickle=False)
            if emb.shape[0] == len(texts) and (self.dim is None or emb.shape[1] == self.dim):
                self.hits += 1
                return emb
        emb = check_embeddings(self.inner.encode(texts), len(texts), self.dim, self.name)
        self.misses += 1
        self._write(path, emb)
        return emb

    def _write(self, path: Path, emb: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "backbone.json"
        if not meta.is_file():
            atomic_write_bytes(meta, json.dumps({"key": self.key}, indent=1).encode())
        buf = io.BytesIO()
        np.save(buf, emb, allow_pickle=False)
        atomic_write_bytes(path, buf.getvalue())
