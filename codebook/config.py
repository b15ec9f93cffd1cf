"""Typed config of the semantic codebook (``codebook:`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CodebookConfig(BaseModel):
    """Residual quantizer settings plus the targets the build checks itself against."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    method: Literal["rq"] = "rq"  # FAISS ResidualQuantizer (the codebook lives in a FAISS index)
    levels: int = Field(3, ge=1, le=16)  # learned levels to start from
    max_levels: int = Field(6, ge=1, le=16)  # levels are added while learned-code collisions exceed the target
    bits: int = Field(8, ge=2, le=16)  # 2**bits codewords per level
    max_collision_rate: float = Field(0.05, ge=0.0, le=1.0)  # target for the learned codes
    dedup: bool = True  # append a TIGER-style disambiguation code so every full ID is unique
    center: bool = True  # subtract the corpus mean (LLM states are anisotropic) ...
    normalize: bool = True  # ... then L2-normalise; queries get the same transform
    beam_size: int = Field(1, ge=1)  # FAISS RQ beam width (1 = greedy: measured fewer collisions, 100% use)
    progressive_dim: bool = False  # FAISS Train_progressive_dim: slightly better, ~10x slower to train
    kmeans_iters: int = Field(25, ge=1)
    seed: int = 0
    recall_k: int = Field(10, ge=1)  # quality report: recall@k of codebook neighbours vs exact
    recall_queries: int = Field(1000, ge=1)  # items sampled as queries for that check
