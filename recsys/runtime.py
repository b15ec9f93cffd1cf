"""The on-device runtime: rank the full catalogue with the base head, a prototype, or a received edit.

Everything here is forward-only and needs nothing from the cloud packages: a base checkpoint
(:mod:`recsys.checkpoint`) plus, optionally, a prototype cache file (a :class:`PrototypeSnapshot` as
JSON). The wire formats of edits and prototype snapshots are defined here, on the device side, and
the cloud produces them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from recsys.atomic_io import atomic_write_text
from recsys.checkpoint import load_checkpoint
from recsys.models import EditableSeqRec, HeadEdit


class LayerEdit(BaseModel):
    """One head layer's edit: full ``dW`` (D×D, row-major) or low-rank ``A`` (D×r) @ ``B`` (r×D); ``db`` (D)."""

    model_config = ConfigDict(extra="forbid")
    dW: list[list[float]] | None = None
    A: list[list[float]] | None = None
    B: list[list[float]] | None = None
    db: list[float] | None = None

    def weight(self) -> torch.Tensor | None:
        if self.dW is not None:
            return torch.tensor(self.dW, dtype=torch.float32)
        if self.A is not None and self.B is not None:
            return torch.tensor(self.A, dtype=torch.float32) @ torch.tensor(self.B, dtype=torch.float32)
        return None

    def bias(self) -> torch.Tensor | None:
        return None if self.db is None else torch.tensor(self.db, dtype=torch.float32)


class EditPayload(BaseModel):
    """What the cloud sends a device for one adaptation (``POST /v1/edits``)."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(..., description="version of the adapter/prototype bank that produced the edit")
    prototype_id: int | None = Field(None, description="prototype the edit is relative to (None = base head)")
    clip: float = Field(1.0, gt=0)
    layers: list[LayerEdit] = Field(default_factory=list, description="residual edit per head layer; empty = none")

    def head_edit(self) -> HeadEdit | None:
        if not self.layers:
            return None
        return HeadEdit([le.weight() for le in self.layers], [le.bias() for le in self.layers], clip=self.clip)

    @staticmethod
    def from_head_edit(edit: HeadEdit, version: str, prototype_id: int | None = None) -> EditPayload:
        """A single-sample ``HeadEdit`` (``[D, D]`` / ``[D]`` tensors) as a payload."""
        layers = [
            LayerEdit(
                dW=None if w is None else w.detach().reshape(w.shape[-2], w.shape[-1]).tolist(),
                db=None if b is None else b.detach().reshape(-1).tolist(),
            )
            for w, b in zip(edit.dW, edit.db)
        ]
        return EditPayload(version=version, prototype_id=prototype_id, clip=edit.clip, layers=layers)


class PrototypeSnapshot(BaseModel):
    """The prototype bank as a device caches it (``GET /v1/prototypes``).

    ``signatures[k]`` lives in the device model's user-state space, so a device assigns itself to the
    nearest prototype with no cloud call; ``edits[k]`` is prototype k's head edit (relative to the
    base head); a device farther than ``ood_threshold`` from every signature is out of distribution.
    """

    model_config = ConfigDict(extra="forbid")
    version: str
    dim: int
    signatures: list[list[float]] = Field(default_factory=list)
    edits: list[EditPayload] = Field(default_factory=list)
    ood_threshold: float | None = None

    @property
    def size(self) -> int:
        return len(self.signatures)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.model_dump_json())

    @staticmethod
    def load(path: Path) -> PrototypeSnapshot:
        return PrototypeSnapshot.model_validate(json.loads(Path(path).read_text()))


class DeviceRuntime:
    """A device's model: map item tokens, compute the user state, assign a prototype, rank."""

    def __init__(self, model: EditableSeqRec, item_tokens: np.ndarray):
        self.model = model.eval()
        self.item_tokens = item_tokens
        self.token_to_id = {str(t): i for i, t in enumerate(item_tokens) if i > 0}
        self.prototypes: PrototypeSnapshot | None = None
        self._signatures: torch.Tensor | None = None
        self._proto_edits: list[HeadEdit | None] = []

    @classmethod
    def load(cls, checkpoint_dir: Path, prototype_cache: Path | None = None) -> DeviceRuntime:
        model, _, tokens = load_checkpoint(checkpoint_dir)
        runtime = cls(model, tokens)
        if prototype_cache is not None and Path(prototype_cache).is_file():
            runtime.set_prototypes(PrototypeSnapshot.load(prototype_cache))
        return runtime

    @property
    def n_items(self) -> int:
        return self.model.n_items

    def set_prototypes(self, snapshot: PrototypeSnapshot) -> None:
        if snapshot.size and snapshot.dim != self.model.head.dim:
            raise ValueError(f"prototype dim {snapshot.dim} != model dim {self.model.head.dim}")
        edits = [e.head_edit() for e in snapshot.edits]  # decode before swapping: never half-updated
        sigs = torch.tensor(snapshot.signatures, dtype=torch.float32) if snapshot.size else None
        self.prototypes, self._signatures, self._proto_edits = snapshot, sigs, edits

    def encode_history(self, item_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``[1, T]`` sequence of the last ``max_seq_len`` items and its length."""
        ids = [i for i in item_ids if 0 < i < self.n_items][-self.model.max_seq_len :]
        seq = torch.zeros(1, self.model.max_seq_len, dtype=torch.long)
        if ids:
            seq[0, : len(ids)] = torch.tensor(ids)
        return seq, torch.tensor([max(len(ids), 1)])

    @torch.inference_mode()
    def user_state(self, item_ids: list[int]) -> torch.Tensor:
        seq, length = self.encode_history(item_ids)
        return self.model.user_state(seq, length)[0]

    @torch.inference_mode()
    def assign(self, state: torch.Tensor) -> tuple[int | None, float]:
        """Nearest prototype signature (Euclidean) and its distance; ``(None, inf)`` without a bank."""
        if self._signatures is None:
            return None, float("inf")
        dist = torch.cdist(state.view(1, -1), self._signatures)[0]
        k = int(torch.argmin(dist))
        return k, float(dist[k])

    def is_ood(self, distance: float) -> bool:
        threshold = self.prototypes.ood_threshold if self.prototypes else None
        return threshold is not None and distance > threshold

    def prototype_edit(self, k: int | None) -> HeadEdit | None:
        return None if k is None else self._proto_edits[k]

    @torch.inference_mode()
    def scores(self, item_ids: list[int], edit: HeadEdit | None = None) -> torch.Tensor:
        """Scores of every item ``[n_items]`` (padding id at ``-inf``)."""
        seq, length = self.encode_history(item_ids)
        return self.model.score(seq, length, edit)[0]

    @torch.inference_mode()
    def rank(
        self, item_ids: list[int], k: int, exclude: set[int] | None = None, edit: HeadEdit | None = None
    ) -> tuple[list[int], list[float]]:
        """Top-``k`` item ids and scores over the full catalogue, ``exclude`` removed; ties by lower id."""
        scores = self.scores(item_ids, edit).clone()
        if exclude:
            scores[torch.tensor(sorted(exclude), dtype=torch.long)] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
        return top.indices.tolist(), top.values.tolist()

    # ---- batched ranking (many requests, one forward pass) ----------------------------------------

    def encode_histories(self, histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``[B, T]`` sequences (each the last ``max_seq_len`` valid items) and their lengths."""
        T, n = self.model.max_seq_len, self.n_items
        rows, lengths = [], []
        for item_ids in histories:
            ids = [i for i in item_ids if 0 < i < n][-T:]
            lengths.append(max(len(ids), 1))
            rows.append(ids + [0] * (T - len(ids)))
        return torch.tensor(rows, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)

    @torch.inference_mode()
    def user_states(self, histories: list[list[int]]) -> torch.Tensor:
        """``[B, D]`` user states of ``B`` histories in one encoder pass (row ``b`` = ``user_state(histories[b])``).

        Padding is trimmed and SASRec reads its last layer at one position (``EditableSeqRec.user_state``).
        """
        seq, length = self.encode_histories(histories)
        empty = seq[:, 0] == 0
        if not bool(empty.any()):
            return self.model.user_state(seq, length)
        # An empty history attends over padding only: every score carries the -10000 mask, so its state is
        # sensitive to float rounding; compute it exactly as batch 1 does (it is the same for every row).
        out = torch.empty(len(seq), self.model.head.dim)
        out[empty] = self.model.user_state(seq[:1] * 0, torch.ones(1, dtype=torch.long))[0]
        if not bool(empty.all()):
            out[~empty] = self.model.user_state(seq[~empty], length[~empty])
        return out

    @torch.inference_mode()
    def assign_batch(self, states: torch.Tensor) -> tuple[list[int | None], list[float]]:
        """:meth:`assign` for each row of ``states`` ``[B, D]``."""
        if self._signatures is None:
            return [None] * len(states), [float("inf")] * len(states)
        dist = torch.cdist(states, self._signatures)
        best, k = dist.min(dim=1)
        return k.tolist(), best.tolist()

    @torch.inference_mode()
    def head_batch(self, states: torch.Tensor, edits: list[HeadEdit | None]) -> torch.Tensor:
        """``[B, D]`` head outputs, row ``b`` edited by ``edits[b]`` (``None`` = base head).

        Rows that share one edit object (or none) share a head call; rows with different edits are scored
        with their (pre-clipped) edits stacked to ``[B', D, D]``, which :class:`EditableHead` applies per row.
        """
        head = self.model.head
        distinct = {id(e): e for e in edits if e is not None}
        if not distinct:
            return head(states)
        if len(distinct) == 1 and all(e is not None for e in edits) and _unbatched(edits[0]):
            return head(states, edits[0])
        out = torch.empty_like(states)
        base = [b for b, e in enumerate(edits) if e is None]
        if base:
            idx = torch.tensor(base)
            out[idx] = head(states[idx])
        rows = [b for b, e in enumerate(edits) if e is not None]
        order = list(distinct)  # unique edits, stacked once and gathered per row
        which = torch.tensor([order.index(id(edits[b])) for b in rows])
        unique = [distinct[key].clipped() for key in order]
        dim, dW, db = head.dim, [], []
        for layer in range(len(head.layers)):
            ws = [e.dW[layer] for e in unique]
            bs = [e.db[layer] for e in unique]
            dW.append(None if all(w is None for w in ws) else torch.stack(
                [torch.zeros(dim, dim) if w is None else w.reshape(dim, dim) for w in ws])[which])
            db.append(None if all(b is None for b in bs) else torch.stack(
                [torch.zeros(dim) if b is None else b.reshape(dim) for b in bs])[which])
        idx = torch.tensor(rows)
        out[idx] = head(states[idx], HeadEdit(dW, db, clip=float("inf")))  # already clipped per edit
        return out

    @torch.inference_mode()
    def rank_states(
        self, states: torch.Tensor, edits: list[HeadEdit | None], ks: list[int], excludes: list[set[int] | None]
    ) -> list[tuple[list[int], list[float]]]:
        """:meth:`rank` for ``B`` requests from their user states ``[B, D]``: one head pass, one scoring matmul,
        one top-k; per request its own edit, ``k`` and exclusions."""
        scores = self.model.logits(self.head_batch(states, edits))
        rows: list[int] = []
        cols: list[int] = []
        for b, ex in enumerate(excludes):
            if ex:
                rows.extend([b] * len(ex))
                cols.extend(ex)
        if cols:
            scores[torch.tensor(rows), torch.tensor(cols)] = float("-inf")
        finite = torch.isfinite(scores).sum(dim=1).tolist()
        top = torch.topk(scores, min(max(ks), scores.size(1)), dim=1)
        ids, vals = top.indices.tolist(), top.values.tolist()
        out = []
        for b, k in enumerate(ks):
            k = min(k, finite[b])
            out.append((ids[b][:k], vals[b][:k]))
        return out


def _unbatched(edit: HeadEdit) -> bool:
    """An edit of ``[D, D]`` / ``[D]`` tensors, which applies to any number of rows as it is."""
    return all(w is None or w.dim() == 2 for w in edit.dW) and all(b is None or b.dim() == 1 for b in edit.db)
