"""The exported device model on onnxruntime: two graphs and the item table (``persona export --format onnx``).

``encoder.onnx``: ``item_ids`` ``[B, W]`` int64 (right-padded, any width up to ``max_seq_len``), ``lengths``
``[B]`` int64 and ``items`` ``[N, D]`` → ``state`` ``[B, D]``, the user state after each row's last item.

``ranker.onnx``: ``state`` ``[B, D]``, the head edit ``dW`` ``[B, L, D, D]`` and ``db`` ``[B, L, D]`` (already
clipped; zeros = no edit), ``exclude`` ``[B, N]`` bool and ``items`` → ``scores`` ``[B, N]`` (padding id 0 and
excluded items at ``-inf``), ``top_scores`` / ``top_ids`` ``[B, K]`` and ``entropy`` ``[B]`` (of the scores
before exclusions: the OOD score's input). The item table is an input of both, stored once (``items.npy``); the
ranker's is the table plus the cloud's item delta where the cached bank carries one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

ENCODER_FILE = "encoder.onnx"
RANKER_FILE = "ranker.onnx"
TABLE_FILE = "items.npy"
TOKENS_FILE = "items.txt"
META_FILE = "device.json"  # written last: marks a complete export
FORMAT = "persona-onnx/1"


@dataclass(frozen=True)
class ModelMeta:
    """``device.json``: what the graphs were exported with."""

    format: str
    model: str
    dataset: str
    n_items: int
    max_seq_len: int
    dim: int
    n_layers: int
    top_k: int
    opset: int

    @staticmethod
    def load(directory: Path) -> ModelMeta:
        path = Path(directory) / META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no complete ONNX export in {directory} ({META_FILE} missing)")
        meta = ModelMeta(**json.loads(path.read_text()))
        if meta.format != FORMAT:
            raise ValueError(f"{path}: format {meta.format!r}, this runtime reads {FORMAT!r}")
        return meta

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2) + "\n"


class Ranked(NamedTuple):
    scores: np.ndarray | None  # [B, N]
    top_scores: np.ndarray  # [B, K]
    top_ids: np.ndarray  # [B, K]
    entropy: np.ndarray | None  # [B]


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxModel:
    """The two graphs of one export on onnxruntime (``threads`` intra-op threads each)."""

    def __init__(self, directory: Path, threads: int = 1):
        directory = Path(directory)
        self.meta = ModelMeta.load(directory)
        self.items = np.load(directory / TABLE_FILE, allow_pickle=False)
        self.scoring_items = self.items  # the table ranked against: ``items`` + the cached bank's item delta
        self.item_tokens = np.asarray((directory / TOKENS_FILE).read_text().splitlines())
        self.encoder = session(directory / ENCODER_FILE, threads)
        self.ranker = session(directory / RANKER_FILE, threads)
        if self.items.shape != (self.meta.n_items, self.meta.dim) or len(self.item_tokens) != self.meta.n_items:
            raise ValueError(f"{directory}: item table {self.items.shape} / {len(self.item_tokens)} tokens do not "
                             f"match {self.meta.n_items} items of width {self.meta.dim}")  # fmt: skip

    def user_states(self, item_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """``[B, D]`` states of right-padded ``item_ids`` ``[B, W]`` (``lengths`` ≥ 1 each)."""
        feeds = {"item_ids": item_ids.astype(np.int64, copy=False), "lengths": lengths.astype(np.int64, copy=False),
                 "items": self.items}  # fmt: skip
        return self.encoder.run(None, feeds)[0]

    def rank(
        self, states: np.ndarray, dW: np.ndarray, db: np.ndarray, exclude: np.ndarray, scores: bool = True
    ) -> Ranked:
        """Scores, top-``K`` and entropies of ``states`` under per-row edits ``dW``/``db`` with ``exclude``
        (``scores=False``: the top-``K`` only, the other fields None; nothing else is copied out)."""
        feeds = {"state": states, "dW": dW, "db": db, "exclude": exclude, "items": self.scoring_items}
        if scores:
            return Ranked(*self.ranker.run(None, feeds))
        return Ranked(None, *self.ranker.run(["top_scores", "top_ids"], feeds), None)

    def no_edit(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero ``(dW, db)`` for ``batch`` rows: the base head."""
        m = self.meta
        return np.zeros((batch, m.n_layers, m.dim, m.dim), np.float32), np.zeros((batch, m.n_layers, m.dim), np.float32)
