"""The wire formats of edits and prototype snapshots, on the device side (torch tensors); the cloud
produces them. The torch-free runtime reads the same JSON with numpy (:mod:`persona_device.wire`), and the
checks of a snapshot live there once (``persona_device.wire.check_snapshot``).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from persona_device import wire
from persona_device.wire import part_names
from recsys.atomic_io import atomic_write_text
from recsys.models import HeadEdit
from recsys.ood import OodScore

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
    _centre_parts: dict[int, list[torch.Tensor]] = PrivateAttr(default_factory=dict)

    @cached_property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weights, biases, centres), decoded once per snapshot (not per edit)."""
        out = self.dim * self.dim + self.dim
        return (
            unpack(self.weights, "<f4", (self.n_layers, out, self.code_dim)),
            unpack(self.biases, "<f4", (self.n_layers, out)),
            unpack(self.centres, "<f4", (self.n_prototypes, self.n_layers, self.code_dim)),
        )

    def parts(self, code: torch.Tensor) -> list[torch.Tensor]:
        """``clip(W_l z_l + b_l)`` of a per-layer code ``[L, code_dim]`` as the edit's parts ``[dW_0.., db_0..]``."""
        w, b, _ = self.tensors
        d = self.dim
        raw = ((w @ code.unsqueeze(-1)).squeeze(-1) + b).clamp(-self.clip, self.clip)  # [L, D·D + D]
        return [r[: d * d].view(d, d) for r in raw] + [r[d * d :] for r in raw]

    def centre_parts(self, k: int) -> list[torch.Tensor]:
        """:meth:`parts` of prototype ``k``'s code, computed once per snapshot (every ``code`` edit built on
        prototype k subtracts them)."""
        if k not in self._centre_parts:
            self._centre_parts[k] = self.parts(self.tensors[2][k])
        return self._centre_parts[k]


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
    n = decoder.n_layers
    mine = decoder.parts(unpack(payload.data, "<f4", (n, decoder.code_dim)))
    k = payload.prototype_id
    if k is not None:
        if not 0 <= k < decoder.n_prototypes or k >= len(prototypes) or prototypes[k] is None:
            raise ValueError(f"prototype_id {k} is not in the cached bank")
        proto = prototypes[k].dW + prototypes[k].db
        mine = prototype_plus_residual(proto, mine, decoder.centre_parts(k), decoder.residual_clip)
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
