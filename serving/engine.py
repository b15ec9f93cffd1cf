"""The device model behind one interface, on torch or on the torch-free runtime (``serve.device.runtime``).

``torch``: :class:`recsys.runtime.DeviceRuntime` on the checkpoint. ``onnx``: :class:`persona_device.runtime.
OnnxDeviceRuntime` on the checkpoint's ONNX export (``serve.device.onnx_dir``, default ``<checkpoint>/device-onnx``;
:func:`onnx_export_dir` writes it when it is missing or older than the checkpoint). Both read the same snapshot and
edit JSON and give the same rankings (``tests/serving/test_engine.py``).

What the rank path asks of it, batched: user states and the prototype each may fall back on (:meth:`Engine.encode`:
the nearest cached prototype, ``None`` out of distribution), the rankings (:meth:`Engine.rank`); and once per
answer or bank: a received edit checked against the head (:meth:`Engine.decode`), the cached bank
(:meth:`Engine.load_bank`). States and edits are the runtime's own types (tensors or arrays); nothing above this
module looks inside them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persona_device.model import META_FILE
from persona_device.runtime import OnnxDeviceRuntime
from persona_device.wire import Payload, Snapshot, pack
from recsys import run_layout
from recsys.runtime import DeviceRuntime
from recsys.wire import EditPayload, PrototypeSnapshot
from serving.artifacts import Artifacts, require_checkpoint
from serving.config import AppConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One history encoded: its user state and the prototype it may fall back on (None: no bank, or out of
    distribution by the bank's OOD score)."""

    state: Any
    prototype: int | None


@dataclass(frozen=True)
class Received:
    """A cloud edit as the device holds it: the bank version it was made with, its prototype, the edit (None: the
    base head)."""

    version: str
    prototype_id: int | None
    edit: Any


class Engine:
    """The rank path's view of a device runtime (``rt``: torch's or onnx's; they share these methods).

    More than 12 methods because it is one adapter: every call the rank path makes on a runtime (encode,
    rank, fallback, edit and bank parsing, state distance and wire form) plus four read-only properties;
    the two subclasses fill in the few that differ by array type.
    """

    def __init__(self, rt: DeviceRuntime | OnnxDeviceRuntime, n_layers: int, dim: int, max_seq_len: int):
        self.rt, self.n_layers, self.dim, self.max_seq_len = rt, n_layers, dim, max_seq_len
        self.token_to_id: dict[str, int] = rt.token_to_id
        self.tokens = [str(t) for t in rt.item_tokens]  # item id → token, as sent

    @property
    def n_items(self) -> int:
        return self.rt.n_items

    @property
    def bank_version(self) -> str | None:
        return self.rt.prototypes.version if self.rt.prototypes is not None else None

    @property
    def bank_size(self) -> int:
        return self.rt.prototypes.size if self.rt.prototypes is not None else 0

    @property
    def code_version(self) -> str | None:
        """The cached bank version ``code`` edits can be decoded against (None: ask for dense edits)."""
        return self.rt.edit_encoding_ready

    def encode(self, windows: list[list[int]]) -> list[Row]:
        """One encoder pass over ``windows``, one prototype assignment, the bank's OOD rule per row."""
        states = self.rt.user_states(windows)
        protos, _ = self.rt.assign_batch(states)
        far = self.rt.ood_flags(states, protos)
        return [Row(states[i], None if far[i] else protos[i]) for i in range(len(windows))]

    def rank(self, states: list, edits: list, ks: list[int], excludes: list[set[int]]) -> list[tuple[list, list]]:
        """Top-``k`` (ids, scores) per row: one head pass, one catalogue matmul, one top-k."""
        return self.rt.rank_states(self._stack(states), edits, ks, excludes)

    def fallback(self, prototype: int | None):
        """The cached prototype's edit as served alone (None: the base head; the cache gate applies)."""
        return self.rt.prototype_edit(prototype) if self.rt.prototypes is not None else None

    def parse_edit(self, raw: bytes):
        """The cloud's ``/v1/edits`` body as this runtime's payload; ``ValueError`` when malformed."""
        raise NotImplementedError

    def decode(self, payload) -> Received:
        """A parsed payload as the edit to rank with, checked against the head; ``ValueError`` when unusable (a
        code edit of another bank, shapes that are not the head's)."""
        try:
            edit = self.rt.decode_edit(payload)
        except RuntimeError as exc:  # torch: data that does not fit the stated shapes
            raise ValueError(str(exc)) from exc
        if edit is not None:
            self._check(edit)
        return Received(payload.version, payload.prototype_id, edit)

    def load_bank(self, raw: bytes) -> str:
        """Take the snapshot JSON ``raw`` as the cached bank (all or nothing); its version. ``ValueError`` when
        malformed or not for this model."""
        raise NotImplementedError

    def distance(self, a, b) -> float:
        """Euclidean distance between two user states (the drift policy's signal)."""
        raise NotImplementedError

    def wire_state(self, state) -> str:
        """A user state as the cloud takes it (``EditRequest.state``: base64 float32)."""
        raise NotImplementedError

    def _stack(self, states: list):
        raise NotImplementedError

    def _check(self, edit) -> None:
        if len(edit.dW) != self.n_layers or len(edit.db) != self.n_layers:
            raise ValueError(f"edit has {len(edit.dW)} layers, head has {self.n_layers}")
        d = self.dim
        for w, b in zip(edit.dW, edit.db):
            if w is not None and tuple(w.shape) != (d, d) or b is not None and tuple(b.shape) != (d,):
                raise ValueError(f"edit shapes do not match the head dim {d}")


class TorchEngine(Engine):
    def __init__(self, rt: DeviceRuntime):
        head = rt.model.head
        super().__init__(rt, len(head.layers), head.dim, rt.model.max_seq_len)

    def parse_edit(self, raw: bytes) -> EditPayload:
        return EditPayload.model_validate_json(raw)

    def load_bank(self, raw: bytes) -> str:
        snapshot = PrototypeSnapshot.model_validate_json(raw)
        self.rt.set_prototypes(snapshot)
        return snapshot.version

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.dist(a, b))

    def wire_state(self, state: torch.Tensor) -> str:
        return pack(state.detach().cpu().numpy(), "<f4")

    def _stack(self, states: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(states)


class OnnxEngine(Engine):
    def __init__(self, rt: OnnxDeviceRuntime):
        meta = rt.model.meta
        super().__init__(rt, meta.n_layers, meta.dim, meta.max_seq_len)

    def parse_edit(self, raw: bytes) -> Payload:
        try:
            return Payload.from_dict(json.loads(raw))
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed edit payload: {exc}") from exc

    def load_bank(self, raw: bytes) -> str:
        try:
            snapshot = Snapshot.from_dict(json.loads(raw))
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed prototype snapshot: {exc}") from exc
        self.rt.set_prototypes(snapshot)
        return snapshot.version

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b))

    def wire_state(self, state: np.ndarray) -> str:
        return pack(state, "<f4")

    def _stack(self, states: list[np.ndarray]) -> np.ndarray:
        return np.stack(states)


def onnx_export_dir(cfg: AppConfig, art: Artifacts | None = None) -> Path:
    """``serve.device.onnx_dir`` (default ``<checkpoint>/device-onnx``), exported from the served checkpoint first
    when it holds no complete export or one older than the checkpoint (``persona export --format onnx`` writes the same
    files and also checks them against torch on every test row)."""
    from recsys.checkpoint import load_checkpoint
    from recsys.onnx_export import OnnxExportOptions, export_onnx

    ckpt = require_checkpoint(cfg)
    out = Path(cfg.serve.device.onnx_dir) if cfg.serve.device.onnx_dir else run_layout.onnx_dir(ckpt)
    done, source = out / META_FILE, ckpt / "model.pt"
    if done.is_file() and (not source.is_file() or done.stat().st_mtime >= source.stat().st_mtime):
        return out
    log.info("exporting the device model to ONNX", extra={"checkpoint": str(ckpt), "out": str(out)})
    model, meta, tokens = (art.model, art.meta, art.tokens) if art is not None else load_checkpoint(ckpt)
    return export_onnx(model, out, tokens, meta.dataset, OnnxExportOptions())


def load_engine(cfg: AppConfig, art: Artifacts) -> Engine:
    """The engine ``serve.device.runtime`` names, on the served checkpoint."""
    gate = cfg.serve.device.cache_gate
    if cfg.serve.device.runtime == "onnx":
        rt = OnnxDeviceRuntime.load(onnx_export_dir(cfg, art), threads=1)  # one thread per worker, as torch's
        rt.cache_gate = gate
        return OnnxEngine(rt)
    return TorchEngine(DeviceRuntime(art.model, art.tokens, cache_gate=gate))
