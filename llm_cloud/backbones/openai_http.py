"""``openai-http`` backbone: a client for any OpenAI-compatible ``POST /v1/embeddings`` server (vLLM, ours).

Batches of ``batch_size`` texts go out from a thread pool (works inside or outside an event loop), at
most ``concurrency`` in flight. Backpressure: an overloaded server (429, 503, a timeout) halves the
number of requests in flight, which grows back by one per window of successes (AIMD, as TCP does), and
its ``Retry-After`` is honoured. Connect errors, timeouts, 408/429/5xx are retried with exponential
backoff; other 4xx fail at once. Every response is checked: one embedding per input, in ``index``
order, of the expected width.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from tqdm.auto import tqdm

from llm_cloud.backbones.base import Backbone, BackboneError, check_embeddings, check_texts
from llm_cloud.backbones.config import BackboneConfig, OpenAIHTTPConfig

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
OVERLOAD_STATUS = {429, 503}  # the server asks for less: shrink the in-flight window
MAX_RETRY_AFTER_S = 60.0


class InFlightLimit:
    """Bounded requests in flight with additive-increase / multiplicative-decrease.

    ``acquire`` blocks while ``limit`` requests are out (the backpressure on the producer); an overload
    halves ``limit`` (not below 1), and every ``limit`` successes in a row raise it by one, up to ``ceiling``.
    """

    def __init__(self, ceiling: int):
        self.ceiling = self.limit = ceiling
        self.in_flight = self.peak = self.decreases = 0
        self._streak = 0
        self._cond = threading.Condition()

    def acquire(self) -> None:
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def release(self, overloaded: bool) -> None:
        with self._cond:
            self.in_flight -= 1
            if overloaded:
                self.limit, self._streak = max(1, self.limit // 2), 0
                self.decreases += 1
            else:
                self._streak += 1
                if self._streak >= self.limit and self.limit < self.ceiling:
                    self.limit, self._streak = self.limit + 1, 0
            self._cond.notify_all()


def retry_after_s(resp: httpx.Response) -> float | None:
    """The server's ``Retry-After`` in seconds (delta-seconds form), capped; None when absent or a date."""
    try:
        return min(max(float(resp.headers["retry-after"]), 0.0), MAX_RETRY_AFTER_S)
    except (KeyError, ValueError):
        return None


class OpenAIHTTPBackbone(Backbone):
    """Embeddings from a remote OpenAI-compatible server."""

    name = "openai-http"

    def __init__(self, cfg: OpenAIHTTPConfig, **kw):
        super().__init__(**kw)
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/embeddings"
        key = cfg.api_key or os.environ.get(cfg.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s)
        limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
        self.client = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        self._dim = cfg.dim
        self.limit = InFlightLimit(cfg.concurrency)

    @property
    def key(self) -> str:
        return f"openai-http:{self.url}:{self.cfg.model}"

    @property
    def dim(self) -> int | None:
        return self._dim

    def close(self) -> None:
        self.client.close()

    def _post(self, texts: list[str]) -> httpx.Response:
        """One request, retried on transient failures; returns a 2xx response or raises BackboneError."""
        payload = {"model": self.cfg.model, "input": texts, "encoding_format": "float"}
        last, wait = "", 0.0
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                time.sleep(max(wait, self.cfg.backoff_s * 2 ** (attempt - 1)))
            self.limit.acquire()
            overloaded = False
            try:
                resp = self.client.post(self.url, json=payload)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                overloaded = isinstance(exc, httpx.TimeoutException)
                kind = "timed out" if overloaded else "unreachable"
                last, wait = f"{kind} ({type(exc).__name__}: {exc})", 0.0
                continue
            else:
                overloaded = resp.status_code in OVERLOAD_STATUS
            finally:
                self.limit.release(overloaded)
            if resp.status_code < 400:
                return resp
            detail = _error_detail(resp)
            if resp.status_code not in RETRY_STATUS:
                raise BackboneError(f"openai-http: {self.url} answered HTTP {resp.status_code}: {detail}")
            last, wait = f"HTTP {resp.status_code}: {detail}", retry_after_s(resp) or 0.0
        tries = self.cfg.max_retries + 1
        raise BackboneError(f"openai-http: {self.url} failed after {tries} tries: {last}")

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        resp = self._post(texts)
        try:
            data = resp.json()["data"]
            rows = sorted(data, key=lambda r: r["index"])
            if [r["index"] for r in rows] != list(range(len(texts))):
                raise ValueError(f"indices {[r['index'] for r in rows][:5]}... do not cover the batch")
            emb = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise BackboneError(f"openai-http: malformed response from {self.url}: {exc}") from exc
        emb = check_embeddings(emb, len(texts), self._dim, f"openai-http {self.url}")
        if self._dim is None:
            self._dim = emb.shape[1]
        return emb

    def encode(self, texts) -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            raise BackboneError("no texts to encode")
        batches = self._batches(texts)
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
            results = pool.map(self._encode_batch, batches)  # order preserved; first error re-raised
            parts = list(tqdm(results, total=len(batches), desc="encode[openai-http]",
                              disable=not (self.progress and len(batches) > 1)))
        if len({p.shape[1] for p in parts}) > 1:
            raise BackboneError("openai-http: batches returned different embedding widths")
        return check_embeddings(np.concatenate(parts), len(texts), self._dim, "openai-http")


def _error_detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        err = body.get("error", body.get("detail", body))
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except ValueError:
        return resp.text[:300] or resp.reason_phrase


def build(cfg: BackboneConfig) -> OpenAIHTTPBackbone:
    return OpenAIHTTPBackbone(cfg.openai_http, batch_size=cfg.batch_size, progress=cfg.progress)
