"""The on-device runtime: rank the full catalogue with the base head, a prototype, or a received edit.

Everything here is forward-only and needs nothing from the cloud packages: a base checkpoint
(:mod:`recsys.checkpoint`) plus, optionally, a prototype cache file (a :class:`PrototypeSnapshot` as
JSON). The wire formats of edits and prototype snapshots are defined here, on the device side, and
the cloud produces them.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from persona_device import wire
from persona_device.wire import part_names
from recsys.atomic_io import atomic_write_text
from recsys.checkpoint import load_checkpoint
from recsys.models import EditableSeqRec, HeadEdit
from recsys.ood import OodScore, entropy

Encoding = Literal["json", "fp32", "fp16", "code"]
ENCODINGS: tuple[str, ...] = get_args(Encoding)


def pack(array: np.ndarray | torch.Tensor, dtype: str) -> str:
    """Little-endian ``dtype`` bytes of ``array`` (flattened), base64 (``persona_device.wire.pack``)."""
    return wire.pack(array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array), dtype)


def unpack(data: str, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack` as float32 ``shape`` (``persona_device.wire.unpack``); a wrong length: ``ValueError``."""
    return torch.from_numpy(wire.unpack(data, dtype, shape))


def prototype_plus_residual(
    proto: list[torch.Tensor], mine: list[torch.Tensor], theirs: list[torch.Tensor], residual_clip: float
) -> list[torch.Tensor]:
    """``E_k + clamp(clip(ΔW(z)) − clip(ΔW(c_k)), ±r)`` part by part (the cloud's and the device's rule)."""
    return [p + (m - t).clamp(-residual_clip, residual_clip) for p, m, t in zip(proto, mine, theirs)]


class LayerEdit(BaseModel):
    """One head layer's edit as JSON numbers: ``dW`` (D×D, row-major) and ``db`` (D)."""

    model_config = ConfigDict(extra="forbid")
    dW: list[list[float]] | None = None
    db: list[float] | None = None

    def weight(self) -> torch.Tensor | None:
        return None if self.dW is None else torch.tensor(self.dW, dtype=torch.float32)

    def bias(self) -> torch.Tensor | None:
        return None if self.db is None else torch.tensor(self.db, dtype=torch.float32)


class EditDecoder(BaseModel):
    """The adapter's linear code → edit maps and the prototype codes, cached on the device with the bank.

    With it an edit travels as its per-layer code (``L × code_dim`` fp32, a few hundred bytes): the device
    computes ``clip(W_l z_l + b_l)`` itself and, relative to prototype k, adds the clipped residual to
    ``E_k`` exactly as the cloud does (:func:`prototype_plus_residual`).
    """

    model_config = ConfigDict(extra="forbid")
    n_layers: int = Field(..., ge=1)
    dim: int = Field(..., ge=1)
    code_dim: int = Field(..., ge=1)
    clip: float = Field(..., gt=0, description="the adapter's entry clip")
    residual_clip: float = Field(..., gt=0)
    total_clip: float = Field(..., gt=0)
    weights: str = Field(..., description="fp32 base64 [L, D·D + D, code_dim]: rows of dW (row-major) then db")
    biases: str = Field(..., description="fp32 base64 [L, D·D + D]")
    centres: str = Field(..., description="fp32 base64 [K, L, code_dim]: the prototypes' codes")
    n_prototypes: int = Field(..., ge=0)

    @cached_property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights, biases, centres), decoded once per snapshot (not per edit)."""
        out = self.dim * self.dim + self.dim
        return (
            unpack(self.weights, "<f4", (self.n_layers, out, self.code_dim)),
            unpack(self.biases, "<f4", (self.n_layers, out)),
            unpack(self.centres, "<f4", (self.n_prototypes, self.n_layers, self.code_dim)),
        )


class EditPayload(BaseModel):
    """What the cloud sends a device for one adaptation (``POST /v1/edits``).

    The edit itself is, by ``encoding``: ``json`` per-layer number lists (``layers``); ``fp32`` / ``fp16``
    the edit's parts ``[dW_0, db_0, dW_1, …]`` as base64 (``data``): every part (``parts`` None, dense) or only
    those ``parts`` names (a sparse edit, e.g. ``["db.1"]``: the last layer's bias alone, D floats; the parts
    left out are not edited); ``code`` the per-layer code ``[L, code_dim]`` fp32 (``data``), decoded with the
    :class:`EditDecoder` of the cached snapshot of the same ``version``.
    Whatever the encoding, it is the whole edit of the base head (prototype + residual included).
    """

    model_config = ConfigDict(extra="forbid")
    version: str = Field(..., description="version of the adapter/prototype bank that produced the edit")
    prototype_id: int | None = Field(None, description="prototype the edit builds on (None = its own edit)")
    clip: float = Field(1.0, gt=0)
    encoding: Encoding = "json"
    n_layers: int = Field(0, ge=0, description="head layers in ``data`` (binary encodings)")
    dim: int = Field(0, ge=0, description="head width D (binary encodings)")
    data: str | None = Field(None, description="base64 edit or code (binary encodings)")
    layers: list[LayerEdit] = Field(default_factory=list, description="edit per head layer (json); empty = none")
    parts: list[str] | None = Field(
        None, description="fp32 / fp16: the parts in ``data``, in order, named ``dW.<layer>`` / ``db.<layer>`` "
        "(None: every layer's dW and db); a part left out is not edited"
    )

    @model_validator(mode="after")
    def _known_parts(self) -> EditPayload:
        if self.parts is None:
            return self
        if self.encoding not in ("fp32", "fp16"):
            raise ValueError(f"parts are for fp32 / fp16 edits, not {self.encoding!r}")
        names = part_names(self.n_layers)
        if not self.parts or [n for n in names if n in self.parts] != self.parts:
            raise ValueError(f"parts must be some of {names}, in that order, each once")
        return self

    def head_edit(self, decoder: EditDecoder | None = None, prototypes: list[HeadEdit | None] = ()) -> HeadEdit | None:
        """The edit as tensors; ``code`` needs the snapshot's ``decoder`` and decoded prototype edits."""
        if self.encoding == "json":
            if not self.layers:
                return None
            return HeadEdit([le.weight() for le in self.layers], [le.bias() for le in self.layers], clip=self.clip)
        if self.data is None:
            return None
        d, n = self.dim, self.n_layers
        if self.encoding == "code":
            if decoder is None:
                raise ValueError("a code-encoded edit needs the prototype snapshot's decoder")
            return _decode_code(self, decoder, prototypes)
        names = part_names(n) if self.parts is None else self.parts
        sizes = [d * d if name.startswith("dW") else d for name in names]
        flat = unpack(self.data, "<f4" if self.encoding == "fp32" else "<f2", (sum(sizes),))
        got = {name: part.view(d, d) if name.startswith("dW") else part for name, part in zip(names, flat.split(sizes))}
        return HeadEdit([got.get(f"dW.{i}") for i in range(n)], [got.get(f"db.{i}") for i in range(n)], clip=self.clip)

    @staticmethod
    def from_head_edit(
        edit: HeadEdit, version: str, prototype_id: int | None = None, encoding: Encoding = "json"
    ) -> EditPayload:
        """A single-sample ``HeadEdit`` (``[D, D]`` / ``[D]`` tensors, ``None`` where a part is not edited) as a
        payload (not ``code``); fp32 / fp16 carry only the edited parts (``parts`` names them unless all are)."""
        if encoding == "json":
            layers = [
                LayerEdit(
                    dW=None if w is None else w.detach().reshape(w.shape[-2], w.shape[-1]).tolist(),
                    db=None if b is None else b.detach().reshape(-1).tolist(),
                )
                for w, b in zip(edit.dW, edit.db)
            ]
            return EditPayload(version=version, prototype_id=prototype_id, clip=edit.clip, layers=layers)
        if encoding not in ("fp32", "fp16"):
            raise ValueError(f"from_head_edit makes json, fp32 or fp16 payloads, not {encoding!r}")
        names = part_names(len(edit.dW))
        tensors = [t for pair in zip(edit.dW, edit.db) for t in pair]  # in part_names order
        present = [(name, t) for name, t in zip(names, tensors) if t is not None]
        if not present:  # nothing edited: the base head
            return EditPayload(version=version, prototype_id=prototype_id, clip=edit.clip, encoding=encoding,
                               n_layers=len(edit.dW))  # fmt: skip
        data = pack(torch.cat([t.reshape(-1) for _, t in present]), "<f4" if encoding == "fp32" else "<f2")
        parts = None if len(present) == len(names) else [name for name, _ in present]
        return EditPayload(version=version, prototype_id=prototype_id, clip=edit.clip, encoding=encoding,
                           n_layers=len(edit.dW), dim=present[0][1].shape[-1], data=data, parts=parts)  # fmt: skip

    @staticmethod
    def from_code(codes: torch.Tensor, version: str, prototype_id: int | None, clip: float, dim: int) -> EditPayload:
        """A ``code`` payload from one window's per-layer code ``[L, code_dim]``."""
        return EditPayload(version=version, prototype_id=prototype_id, clip=clip, encoding="code",
                           n_layers=codes.shape[0], dim=dim, data=pack(codes, "<f4"))  # fmt: skip


def _decode_code(payload: EditPayload, decoder: EditDecoder, prototypes) -> HeadEdit:
    w, b, centres = decoder.tensors
    n, d = decoder.n_layers, decoder.dim
    z = unpack(payload.data, "<f4", (n, decoder.code_dim))

    def parts(code: torch.Tensor) -> list[torch.Tensor]:
        raw = (w @ code.unsqueeze(-1)).squeeze(-1) + b  # [L, D·D + D]
        raw = raw.clamp(-decoder.clip, decoder.clip)
        return [r[: d * d].view(d, d) for r in raw] + [r[d * d :] for r in raw]

    mine = parts(z)
    k = payload.prototype_id
    if k is not None:
        if not 0 <= k < decoder.n_prototypes or k >= len(prototypes) or prototypes[k] is None:
            raise ValueError(f"prototype_id {k} is not in the cached bank")
        proto = prototypes[k].dW + prototypes[k].db
        mine = prototype_plus_residual(proto, mine, parts(centres[k]), decoder.residual_clip)
    return HeadEdit(mine[:n], mine[n:], clip=payload.clip)


class ItemTableDelta(BaseModel):
    """Rows the cloud adds to the device's scoring table (:mod:`llm_cloud.item_delta`): item ``ids`` and the
    values added to their rows, base64 ``[M, D]`` (``fp16`` or ``fp32``). The encoder keeps its own table."""

    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(..., description="internal item ids (the checkpoint's items.txt order), distinct")
    encoding: Literal["fp32", "fp16"] = "fp16"
    rows: str = Field(..., description="base64 little-endian [len(ids), dim]: added to those rows")

    @staticmethod
    def of(ids: torch.Tensor, rows: torch.Tensor, encoding: str = "fp16") -> ItemTableDelta:
        return ItemTableDelta(ids=ids.tolist(), encoding=encoding, rows=pack(rows, "<f4" if encoding == "fp32"
                                                                               else "<f2"))  # fmt: skip


class PrototypeSnapshot(BaseModel):
    """The prototype bank as a device caches it (``GET /v1/prototypes``).

    ``signatures[k]`` lives in the device model's user-state space, so a device assigns itself to the
    nearest prototype with no cloud call; ``edits[k]`` is prototype k's head edit (relative to the
    base head); ``ood`` is the bank's out-of-distribution score (:mod:`recsys.ood`: the base model's
    entropy + the nearest prototype's miss rate): a device scoring above its threshold is out of
    distribution and keeps the base head; ``cache_ok[k]`` says whether prototype k's edit may be served
    from the cache on its own (the cloud measured it beating the base head on held-out rows; ``None``:
    every one, as banks before the gate); ``decoder`` lets it decode ``code`` edits.
    """

    model_config = ConfigDict(extra="forbid")
    version: str
    dim: int
    signatures: list[list[float]] = Field(default_factory=list)
    edits: list[EditPayload] = Field(default_factory=list)
    ood: OodScore | None = None
    cache_ok: list[bool] | None = None
    decoder: EditDecoder | None = None
    item_delta: ItemTableDelta | None = None  # the cloud's item rows: the device scores with table + delta

    @model_validator(mode="before")
    @classmethod
    def _older_caches(cls, data):
        """Snapshots cached before the OOD score carried a state-distance ``ood_threshold``: ignored."""
        if isinstance(data, dict) and "ood_threshold" in data:
            data = {k: v for k, v in data.items() if k != "ood_threshold"}
        return data

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

    def __init__(self, model: EditableSeqRec, item_tokens: np.ndarray, cache_gate: bool = True):
        self.model = model.eval()
        self.cache_gate = cache_gate  # serve a cached prototype's edit only where the snapshot's cache_ok allows
        self.item_tokens = item_tokens
        self.token_to_id = {str(t): i for i, t in enumerate(item_tokens) if i > 0}
        self.prototypes: PrototypeSnapshot | None = None
        self._signatures: torch.Tensor | None = None
        self._proto_edits: list[HeadEdit | None] = []
        self.scoring_items: torch.Tensor | None = None  # the item table + the cached bank's item delta (None: none)

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
        """Cache ``snapshot``: its prototypes, their edits and its item delta (scored with from now on), all or
        nothing."""
        wire.check_snapshot(snapshot, self.model.head.dim)
        edits = [e.head_edit() for e in snapshot.edits]  # decode before swapping: never half-updated
        if snapshot.decoder is not None:
            snapshot.decoder.tensors  # noqa: B018 - decoded (and checked) here, once, not on the first edit
        sigs = torch.tensor(snapshot.signatures, dtype=torch.float32) if snapshot.size else None
        table = None
        if snapshot.item_delta is not None:
            table = torch.from_numpy(wire.scoring_table(self.model.item_embeddings.detach().numpy(),
                                                        snapshot.item_delta))  # fmt: skip
        self.prototypes, self._signatures, self._proto_edits = snapshot, sigs, edits
        self.scoring_items = table

    def decode_edit(self, payload: EditPayload) -> HeadEdit | None:
        """A received edit as tensors (``code`` edits through the cached snapshot's decoder)."""
        snap = self.prototypes
        if payload.encoding == "code" and (snap is None or snap.version != payload.version):
            raise ValueError(f"code edit of version {payload.version} but the cached bank is "
                             f"{snap.version if snap else 'missing'}")  # fmt: skip
        return payload.head_edit(snap.decoder if snap else None, self._proto_edits)

    @property
    def edit_encoding_ready(self) -> str | None:
        """The cached bank version against which ``code`` edits can be decoded (None: ask for dense)."""
        snap = self.prototypes
        return snap.version if snap is not None and snap.decoder is not None else None

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

    @torch.inference_mode()
    def ood_flags(self, states: torch.Tensor, protos: list[int | None]) -> list[bool]:
        """Per row of ``states`` ``[B, D]`` (nearest prototypes ``protos``): is the device out of distribution
        by the cached bank's score? Always False without a bank or a score."""
        score = self.prototypes.ood if self.prototypes is not None else None
        if score is None or not protos or protos[0] is None:
            return [False] * len(states)
        ent = entropy(self.model.logits(self.model.head(states, None), self.scoring_items))
        return (score.score(ent, torch.tensor(protos)) > score.threshold).tolist()

    def prototype_edit(self, k: int | None) -> HeadEdit | None:
        """Prototype ``k``'s cached edit as the device serves it on its own: None (the base head) when the
        snapshot's ``cache_ok`` says it did not beat the base head (unless ``cache_gate`` is off)."""
        if k is None:
            return None
        ok = self.prototypes.cache_ok if self.prototypes is not None and self.cache_gate else None
        return self._proto_edits[k] if ok is None or ok[k] else None

    @torch.inference_mode()
    def scores(self, item_ids: list[int], edit: HeadEdit | None = None) -> torch.Tensor:
        """Scores of every item ``[n_items]`` (padding id at ``-inf``)."""
        seq, length = self.encode_history(item_ids)
        return self.model.logits(self.model.head(self.model.user_state(seq, length), edit), self.scoring_items)[0]

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
        scores = self.model.logits(self.head_batch(states, edits), self.scoring_items)
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
