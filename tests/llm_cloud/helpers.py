"""Shared by tests/llm_cloud and tests/codebook: one MiniLM per process, real ml-100k item embeddings,
a real uvicorn server on 127.0.0.1, and small Backbone subclasses that fail or stall on purpose."""

from __future__ import annotations

import functools
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import uvicorn

from llm_cloud.backbones import Backbone, BackboneError, CachedBackbone
from llm_cloud.backbones.st import SentenceTransformerBackbone
from llm_cloud.context_text import ContextConfig
from llm_cloud.pipeline import ItemEmbeddings, encode_items
from recsys.config import load_config
from serving.config import load_app_config
from tests.conftest import free_port


@functools.cache
def minilm() -> SentenceTransformerBackbone:
    return SentenceTransformerBackbone(progress=False)


_ITEMS: dict[str, ItemEmbeddings] = {}


def ml100k_embeddings(workdir: Path, cache_dir: Path) -> ItemEmbeddings:
    """Real all-MiniLM-L6-v2 embeddings of every ml-100k item (encoded once per session, then cached)."""
    if "ml-100k" not in _ITEMS:
        backbone = CachedBackbone(minilm(), cache_dir)
        data = load_config(overrides=[f"data.workdir={workdir}"]).data  # with ml-100k's text template
        _ITEMS["ml-100k"] = encode_items("ml-100k", data, ContextConfig(), backbone)
    return _ITEMS["ml-100k"]


@contextmanager
def serve(app):
    """Run ``app`` under a real uvicorn server on a free loopback port; yields the ``.../v1`` base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)


class Wrapped(Backbone):
    """Delegates to another backbone; counts batches. Subclasses add failure modes."""

    def __init__(self, inner: Backbone, batch_size: int = 64):
        super().__init__(batch_size=batch_size, progress=False)
        self.inner = inner
        self.name = f"test-{inner.name}"
        self.calls = 0

    @property
    def key(self) -> str:
        return f"{type(self).__name__}:{self.inner.key}"

    @property
    def dim(self):
        return self.inner.dim

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return self.inner._encode_batch(texts)


class Flaky(Wrapped):
    """Fails its first ``failures`` batches (the server answers 500), then works."""

    def __init__(self, inner: Backbone, failures: int):
        super().__init__(inner)
        self.failures = failures

    def _encode_batch(self, texts):
        self.calls += 1
        if self.calls <= self.failures:
            raise BackboneError("injected failure")
        return self.inner._encode_batch(texts)


class Slow(Wrapped):
    """Takes ``delay_s`` per batch."""

    def __init__(self, inner: Backbone, delay_s: float):
        super().__init__(inner)
        self.delay_s = delay_s

    def _encode_batch(self, texts):
        time.sleep(self.delay_s)
        return super()._encode_batch(texts)


class FailsOnBatch(Wrapped):
    """Raises on batch number ``bad`` (1-based) — for 'nothing cached on error'."""

    def __init__(self, inner: Backbone, bad: int, batch_size: int):
        super().__init__(inner, batch_size=batch_size)
        self.bad = bad

    def _encode_batch(self, texts):
        self.calls += 1
        if self.calls == self.bad:
            raise BackboneError(f"batch {self.bad} failed")
        return self.inner._encode_batch(texts)


def tiny_overrides(workdir: Path, out: Path) -> list[str]:
    """A tiny ml-100k SASRec base + adapter + bank config (seconds on CPU), artifacts under ``out``."""
    return [
        f"data.workdir={workdir}",
        "data.max_seq_len=16",
        "model_params.hidden_size=16",
        "model_params.inner_size=32",
        "model_params.n_layers=1",
        "model_params.item_side=none",  # ID-only: no codebook needed (side views: tests/recsys/test_item_side.py)
        "train.epochs=1",
        "train.dist_timeout_s=30",
        "seeds=[0]",
        f"output_dir={out}",
        "adapter.use_codebook=false",
        "adapter.window=4",
        "adapter.code_dim=8",
        "adapter.epochs=2",
        "adapter.batch_size=52",
        "adapter.samples_per_epoch=442",
        "prototypes.k=2",
        "prototypes.finetune_epochs=1",
        "prototypes.build_samples=500",
    ]


def tiny_base(workdir: Path, out: Path) -> Path:
    """A tiny trained base checkpoint (one process); returns its run dir."""
    from recsys.experiment import train_seeds

    (run_dir,) = train_seeds(load_app_config(overrides=tiny_overrides(workdir, out)), progress=False)
    return run_dir
