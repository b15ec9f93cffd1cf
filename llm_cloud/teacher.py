"""The cloud teacher: an ensemble of trained checkpoints scoring in the device's item space.

``log_probs(item_seq, item_len)`` is the members' mean log-softmax over the catalogue, renormalised
(a geometric-mean ensemble: the same ranking as the plain mean, and a proper log-distribution to distil
from; for one member it is that member's log-softmax). Members may be any models and seeds, but they
must share one item vocabulary (``items.txt``), and the device the teacher serves must share it too.
Checkpoints are read by :func:`recsys.checkpoint.load_checkpoint` (weights only, no pickles).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recsys.checkpoint import Loaded, load_checkpoint
from recsys.models import EditableSeqRec, score_with_edit


def _same_vocabulary(tokens: np.ndarray, reference: np.ndarray) -> bool:
    return len(tokens) == len(reference) and bool(np.array_equal(tokens.astype(str), reference.astype(str)))


class EnsembleTeacher:
    """Frozen models with one item vocabulary; ``names`` say where each came from (for errors and reports)."""

    def __init__(self, models: Sequence[EditableSeqRec], item_tokens: np.ndarray, names: Sequence[str]):
        if not models:
            raise ValueError("a teacher needs at least one model")
        for model, name in zip(models, names, strict=True):
            if model.n_items != len(item_tokens):
                raise ValueError(f"teacher member {name} scores {model.n_items} items, the vocabulary has "
                                 f"{len(item_tokens)}")  # fmt: skip
        self.models = [m.eval() for m in models]
        self.item_tokens = np.asarray(item_tokens)
        self.names = list(names)

    @classmethod
    def load(cls, paths: Sequence[Path], vocabulary: np.ndarray | None = None,
             read: Callable[[Path], Loaded] = load_checkpoint) -> EnsembleTeacher:  # fmt: skip
        """Load checkpoint directories (with ``read``); all must share ``vocabulary`` (default: the first one's
        items.txt)."""
        models, names = [], []
        for path in paths:
            model, meta, tokens = read(Path(path))
            if vocabulary is None:
                vocabulary = tokens
            if meta.n_items != len(vocabulary) or not _same_vocabulary(tokens, vocabulary):
                raise ValueError(f"checkpoint {path} has another item vocabulary ({meta.n_items} items) than "
                                 f"the teacher's ({len(vocabulary)} items); members must share items.txt")
            models.append(model)
            names.append(str(path))
        if not models:
            raise ValueError("a teacher needs at least one checkpoint")
        return cls(models, vocabulary, names)

    @property
    def n_items(self) -> int:
        return len(self.item_tokens)

    def check_serves(self, item_tokens: np.ndarray, name: str) -> None:
        """Raise ValueError unless a device with ``item_tokens`` (``name`` in the message) shares the vocabulary."""
        if not _same_vocabulary(np.asarray(item_tokens), self.item_tokens):
            raise ValueError(f"{name} has another item vocabulary ({len(item_tokens)} items) than the teacher's "
                             f"({self.n_items}); the teacher can only teach in the device's item space")

    @torch.no_grad()
    def log_probs_batched(self, item_seq: torch.Tensor, item_len: torch.Tensor, batch: int = 512,
                          progress: bool = False) -> torch.Tensor:  # fmt: skip
        """:meth:`log_probs` of many rows, ``batch`` at a time (a tqdm bar with ``progress``)."""
        starts = tqdm(range(0, len(item_seq), batch), desc="teacher", unit="batch", leave=False, disable=not progress)
        return torch.cat([self.log_probs(item_seq[i : i + batch], item_len[i : i + batch]) for i in starts])

    def log_probs(self, item_seq: torch.Tensor, item_len: torch.Tensor) -> torch.Tensor:
        """``[B, n_items]`` log-probabilities; the padding id 0 gets ``-inf``."""
        total = None
        for model, name in zip(self.models, self.names):
            if item_seq.size(1) > model.max_seq_len:
                raise ValueError(f"histories of {item_seq.size(1)} items, member {name} reads at most "
                                 f"{model.max_seq_len}")  # fmt: skip
            lp = torch.log_softmax(score_with_edit(model, item_seq, item_len).float(), dim=-1)
            total = lp if total is None else total + lp
        return torch.log_softmax(total / len(self.models), dim=-1)
