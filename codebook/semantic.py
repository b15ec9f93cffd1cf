"""``SemanticCodebook``: items → short hierarchical semantic IDs, held in a FAISS residual-quantizer index.

Build: embeddings are centred on the corpus mean and L2-normalised (the same transform is applied to
every query), a FAISS ``ResidualQuantizer`` is trained, and each item's per-level codes are its
learned semantic ID. While more than ``max_collision_rate`` of items share a full learned ID a
level is added (up to ``max_levels``). Items that still collide (e.g. identical texts) get a last
disambiguating code, their rank within the group, as TIGER does, so full IDs are unique.

On disk (``save(dir)``): ``index.faiss`` (the quantizer and the items' codes, ``faiss.write_index``),
``semantic_ids.npy``, ``mean.npy`` and ``meta.json`` (config, item ids, level sizes, build log).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from codebook import metrics, quantizer
from codebook.config import CodebookConfig

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


class CodebookError(ValueError):
    """Bad input to the codebook (shape, width, unknown item) or an unreadable codebook directory."""


def disambiguate(codes: np.ndarray) -> np.ndarray:
    """Rank of each row among the rows with the same codes (0 for the first), in row order."""
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    suffix = np.zeros(len(codes), dtype=np.int64)
    seen: dict[int, int] = {}
    for row, group in enumerate(inverse):
        suffix[row] = seen.get(group, 0)
        seen[group] = suffix[row] + 1
    return suffix


class SemanticCodebook:
    """Learned residual codebook over item embeddings, with semantic-ID lookups."""

    def __init__(
        self,
        index,
        cfg: CodebookConfig,
        mean: np.ndarray,
        semantic_ids: np.ndarray,
        item_ids: list[str],
        level_sizes: list[int],
        build_log: list[dict] | None = None,
    ):
        self.index = index
        self.cfg = cfg
        self.mean = mean.astype(np.float32)
        self.semantic_ids = semantic_ids.astype(np.int64)
        self.item_ids = list(item_ids)
        self.level_sizes = list(level_sizes)
        self.build_log = build_log or []
        self._row = {item: i for i, item in enumerate(self.item_ids)}

    # ---- shape -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def levels(self) -> int:
        """Learned levels (each a FAISS codebook of ``2**bits`` codewords)."""
        return int(self.index.rq.M)

    @property
    def width(self) -> int:
        """Columns of a semantic ID: learned levels plus the disambiguation code when ``dedup``."""
        return self.semantic_ids.shape[1]

    # ---- build -------------------------------------------------------------------------------
    @classmethod
    def build(
        cls, emb: np.ndarray, cfg: CodebookConfig, item_ids: Sequence[str] | None = None
    ) -> SemanticCodebook:
        """Train on item embeddings ``[n_items, d]`` (rows aligned with ``item_ids``)."""
        emb = _check(emb, None)
        n = len(emb)
        if n < 2:
            raise CodebookError(f"need at least 2 items to build a codebook, got {n}")
        if n < 1 << cfg.bits:
            k = 1 << cfg.bits
            raise CodebookError(f"{n} items are fewer than the {k} codewords per level: lower codebook.bits")
        item_ids = [str(i) for i in item_ids] if item_ids is not None else [str(i) for i in range(n)]
        if len(item_ids) != n:
            raise CodebookError(f"{len(item_ids)} item ids for {n} embeddings")
        if len(set(item_ids)) != n:
            raise CodebookError("item ids are not unique")
        mean = emb.mean(0) if cfg.center else np.zeros(emb.shape[1], dtype=np.float32)
        x = _transform(emb, mean, cfg.normalize)
        t0 = time.perf_counter()
        top = max(cfg.levels, cfg.max_levels)  # train once with the most levels, keep the shortest prefix
        full = quantizer.train_index(x, top, cfg.bits, cfg.beam_size, cfg.kmeans_iters, cfg.seed, cfg.progressive_dim)
        build_log = [{"trained_levels": top, "train_s": time.perf_counter() - t0}]
        for levels in range(cfg.levels, top + 1):
            index = quantizer.truncate(full, levels) if levels < top else full
            codes = quantizer.encode(index, x)
            rate = metrics.collision_rate(codes)
            build_log.append({"levels": levels, "collision_rate": rate})
            log.info("codebook: %d levels x %d bits → learned-code collision rate %.2f%%", levels, cfg.bits,
                     100 * rate)
            if rate <= cfg.max_collision_rate:
                break
        else:
            log.warning("codebook: %.2f%% learned-code collisions even with %d levels (target %.2f%%)",
                        100 * rate, top, 100 * cfg.max_collision_rate)
        index.add(x)
        sizes = [1 << cfg.bits] * index.rq.M
        ids = codes
        if cfg.dedup:
            suffix = disambiguate(codes)
            ids = np.hstack([codes, suffix[:, None]])
            sizes.append(int(suffix.max()) + 1)
        return cls(index, cfg, mean, ids, item_ids, sizes, build_log)

    # ---- lookups -----------------------------------------------------------------------------
    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        """The build's preprocessing (centre on the corpus mean, L2-normalise) applied to queries."""
        return _transform(_check(embeddings, self.dim), self.mean, self.cfg.normalize)

    def hits(self, embeddings: np.ndarray) -> np.ndarray:
        """Codebook hits: nearest codeword per learned level (residual beam search) → int ``[n, levels]``."""
        return quantizer.encode(self.index, self.transform(embeddings))

    def semantic_id(self, item_id: str) -> tuple[int, ...]:
        """Full semantic ID of an item."""
        row = self._row.get(str(item_id))
        if row is None:
            raise CodebookError(f"unknown item id '{item_id}'")
        return tuple(int(c) for c in self.semantic_ids[row])

    def items_with_prefix(self, prefix: Sequence[int]) -> np.ndarray:
        """Rows (into the item table) whose semantic ID starts with ``prefix``; ``()`` → all items."""
        prefix = np.asarray(prefix, dtype=np.int64).reshape(-1)
        if len(prefix) > self.width:
            raise CodebookError(f"prefix has {len(prefix)} codes, semantic IDs have {self.width}")
        mask = (self.semantic_ids[:, : len(prefix)] == prefix).all(axis=1)
        return np.flatnonzero(mask)

    def neighbours(self, embeddings: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Nearest items by codebook-decoded distance (FAISS ADC search): (distances, rows)."""
        return self.index.search(self.transform(embeddings), k)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the codebook to ``directory`` (built in a temp dir, then renamed into place)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
        tmp.chmod(0o755)
        try:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            np.save(tmp / "semantic_ids.npy", self.semantic_ids, allow_pickle=False)
            np.save(tmp / "mean.npy", self.mean, allow_pickle=False)
            meta = {
                "format_version": FORMAT_VERSION,
                "config": self.cfg.model_dump(mode="json"),
                "dim": self.dim,
                "levels": self.levels,
                "level_sizes": self.level_sizes,
                "item_ids": self.item_ids,
                "build_log": self.build_log,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            if directory.exists():
                old = directory.with_name(f".{directory.name}-old-{os.getpid()}")
                directory.rename(old)
                tmp.rename(directory)
                _rmtree(old)
            else:
                tmp.rename(directory)
        except BaseException:
            _rmtree(tmp)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SemanticCodebook:
        directory = Path(directory)
        files = ("index.faiss", "semantic_ids.npy", "mean.npy", "meta.json")
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise CodebookError(f"codebook dir {directory} lacks {', '.join(missing)}")
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise CodebookError(f"codebook dir {directory}: unsupported format {meta.get('format_version')}")
        raw = faiss.read_index(str(directory / "index.faiss"))
        index = faiss.downcast_index(raw)
        if not isinstance(index, faiss.IndexResidualQuantizer):
            raise CodebookError(f"codebook dir {directory}: index is {type(index).__name__}, not a residual quantizer")
        raw.this.disown()  # the downcast wrapper now owns the C++ object (else it dies with `raw`)
        index.this.own(True)
        index.rq.max_beam_size = meta["config"]["beam_size"]
        return cls(
            index,
            CodebookConfig.model_validate(meta["config"]),
            np.load(directory / "mean.npy", allow_pickle=False),
            np.load(directory / "semantic_ids.npy", allow_pickle=False),
            meta["item_ids"],
            meta["level_sizes"],
            meta.get("build_log"),
        )


def _check(emb: np.ndarray, dim: int | None) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim == 1:
        emb = emb[None, :]
    if emb.ndim != 2:
        raise CodebookError(f"embeddings must be [n, d], got shape {emb.shape}")
    if dim is not None and emb.shape[1] != dim:
        raise CodebookError(f"embedding dimension {emb.shape[1]} does not match the codebook's {dim}")
    if not np.isfinite(emb).all():
        raise CodebookError("embeddings contain NaN or inf")
    return emb


def _transform(emb: np.ndarray, mean: np.ndarray, normalize: bool) -> np.ndarray:
    x = emb - mean
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x, dtype=np.float32)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
