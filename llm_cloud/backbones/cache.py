"""On-disk embedding cache: ``<cache_dir>/<backbone-slug>/<sha256 of texts>.npy``.

The slug holds the backbone's name plus a hash of its full identity (:attr:`Backbone.key`), so a
different model, pooling, prefix or server never reads another's vectors. Files are written to a
temp name and renamed (atomic), only after the whole list encoded and passed the checks, so an
error leaves nothing behind.

The cache is bounded (:class:`DiskLRU`): at most ``max_entries`` files and ``max_bytes`` in all under
``cache_dir`` (every backbone's together). A hit marks its file used (mtime); a write that goes over the
bound deletes the least recently used entries until 90 % of it is left, so the directory is rescanned
once per tenth of the bound written, not on every write. An entry larger than ``max_bytes`` is not
cached. Processes may share the directory: each counts its own writes since its last scan (others'
writes show at its next scan), and an entry another process deleted is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llm_cloud.backbones.base import Backbone, check_embeddings, check_texts
from llm_cloud.backbones.config import CACHE_MAX_BYTES, CACHE_MAX_ENTRIES
from recsys.atomic_io import atomic_write_bytes

ENTRY = re.compile(r"[0-9a-f]{64}\.npy")  # a cache entry's file name (temp files start with '.')


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of the texts, length-prefixed; defined for every ``str`` (lone surrogates included)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")  # injective, and equal to plain UTF-8 for valid text
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def backbone_slug(key: str) -> str:
    name = key.split(":", 1)[0]
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class DiskLRU:
    """Keeps the entries under ``root/*/`` within ``max_entries`` files and ``max_bytes`` (None: no limit),
    deleting the least recently used (oldest mtime) first."""

    def __init__(self, root: Path, max_entries: int | None, max_bytes: int | None):
        self.root, self.max_entries, self.max_bytes = Path(root), max_entries, max_bytes
        self._used: tuple[int, int] | None = None  # (entries, bytes): the last scan plus this process's writes
        self._lock = threading.Lock()

    def fits(self, size: int) -> bool:
        return self.max_bytes is None or size <= self.max_bytes

    @staticmethod
    def touch(path: Path) -> None:
        """Marks ``path`` used now, to the nanosecond (file systems stamp writes with a coarser clock)."""
        now = time.time_ns()
        try:
            os.utime(path, ns=(now, now))
        except FileNotFoundError:  # evicted meanwhile by another process
            pass

    def added(self, path: Path, size: int) -> None:
        """Records a new entry of ``size`` bytes at ``path``; evicts when the cache is over its bound."""
        self.touch(path)
        with self._lock:
            if self._used is not None:
                self._used = (self._used[0] + 1, self._used[1] + size)
            if self._used is None or not self._within(*self._used):
                self._used = self._evict()

    def _within(self, entries: int, size: int, low_water: bool = False) -> bool:
        """Whether ``entries`` files of ``size`` bytes fit the bound (or its 90 % low-water mark)."""
        return all(limit is None or used <= (limit - limit // 10 if low_water else limit)
                   for used, limit in ((entries, self.max_entries), (size, self.max_bytes)))

    def _evict(self) -> tuple[int, int]:
        """Scans; when over the bound, deletes the least recently used entries down to the low-water mark
        (never the newest). Returns the entries and bytes left."""
        found = self._scan()
        entries, size = len(found), sum(nbytes for _, nbytes, _ in found)
        if self._within(entries, size):
            return entries, size
        for _, nbytes, path in found[:-1]:
            if self._within(entries, size, low_water=True):
                break
            path.unlink(missing_ok=True)  # another process may have deleted it first
            entries, size = entries - 1, size - nbytes
        return entries, size

    def _scan(self) -> list[tuple[int, int, Path]]:
        """(mtime in ns, size, path) of every entry, least recently used first."""
        found = []
        for path in filter(lambda p: ENTRY.fullmatch(p.name), self.root.glob("*/*.npy")):
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted meanwhile by another process
                continue
            found.append((stat.st_mtime_ns, stat.st_size, path))
        return sorted(found)


class CachedBackbone(Backbone):
    """Wraps a backbone; ``encode`` returns cached vectors for a list of texts seen before. The cache under
    ``cache_dir`` holds at most ``max_entries`` files and ``max_bytes`` (None: unbounded), see :class:`DiskLRU`."""

    def __init__(self, inner: Backbone, cache_dir: str | Path, max_entries: int | None = CACHE_MAX_ENTRIES,
                 max_bytes: int | None = CACHE_MAX_BYTES):
        super().__init__(inner.batch_size, inner.progress)
        self.inner = inner
        self.name = inner.name
        self.dir = Path(cache_dir) / backbone_slug(inner.key)
        self.lru = DiskLRU(Path(cache_dir), max_entries, max_bytes)
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
        emb = self._read(path, len(texts))
        if emb is not None:
            self.hits += 1
            return emb
        emb = check_embeddings(self.inner.encode(texts), len(texts), self.dim, self.name)
        self.misses += 1
        self._write(path, emb)
        return emb

    def _read(self, path: Path, n: int) -> np.ndarray | None:
        """The ``n`` vectors cached at ``path`` (marked used), or None: never written, evicted (by any
        process), unreadable, or of another shape."""
        try:
            emb = np.load(path, allow_pickle=False)
        except (OSError, EOFError, ValueError):
            return None
        if emb.ndim != 2 or emb.shape[0] != n or (self.dim is not None and emb.shape[1] != self.dim):
            return None
        self.lru.touch(path)
        return emb

    def _write(self, path: Path, emb: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, emb, allow_pickle=False)
        data = buf.getvalue()
        if not self.lru.fits(len(data)):
            return  # larger than the whole cache may hold
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "backbone.json"
        if not meta.is_file():
            atomic_write_bytes(meta, json.dumps({"key": self.key}, indent=1).encode())
        atomic_write_bytes(path, data)
        self.lru.added(path, len(data))
