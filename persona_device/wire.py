"""The device's wire formats read with the standard library and numpy: edits and prototype snapshots.

The same JSON as :class:`recsys.wire.EditPayload` and :class:`recsys.wire.PrototypeSnapshot` (which
the cloud writes and the torch runtime reads), decoded into numpy arrays; the rules (code edits, prototype
+ residual, the OOD score) are those of :mod:`recsys.runtime` and :mod:`recsys.ood`, and
``tests/persona_device/test_runtime.py`` holds the two runtimes to the same rankings.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ENCODINGS = ("json", "fp32", "fp16", "code")
_PAYLOAD_KEYS = {"version", "prototype_id", "clip", "encoding", "n_layers", "dim", "data", "layers", "parts"}
_SNAPSHOT_KEYS = {"version", "dim", "signatures", "edits", "ood", "cache_ok", "decoder", "item_delta"}
_ITEM_DELTA_KEYS = {"ids", "encoding", "rows"}
_DECODER_KEYS = {"n_layers", "dim", "code_dim", "clip", "residual_clip", "total_clip", "weights", "biases",
                 "centres", "n_prototypes"}  # fmt: skip
_OOD_KEYS = {"w_entropy", "w_proto", "bias", "proto_logodds", "threshold"}


def _check_keys(data: dict, allowed: set[str], required: set[str], what: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected an object, got {type(data).__name__}")
    if unknown := sorted(set(data) - allowed):
        raise ValueError(f"{what}: unknown field(s) {', '.join(unknown)}")
    if missing := sorted(required - set(data)):
        raise ValueError(f"{what}: missing field(s) {', '.join(missing)}")


def part_names(n_layers: int) -> list[str]:
    """A head edit's parts in wire order: ``dW.0, db.0, dW.1, db.1, …`` (a payload's ``parts``)."""
    return [f"{kind}.{layer}" for layer in range(n_layers) for kind in ("dW", "db")]


def check_snapshot(snapshot, dim: int) -> None:
    """A bank snapshot (this module's :class:`Snapshot` or ``recsys.wire.PrototypeSnapshot``: the same fields)
    fits a head of width ``dim`` and is consistent with itself; ``ValueError`` naming what does not."""
    if snapshot.size and snapshot.dim != dim:
        raise ValueError(f"prototype dim {snapshot.dim} != model dim {dim}")
    if snapshot.ood is not None and len(snapshot.ood.proto_logodds) != snapshot.size:
        raise ValueError(f"OOD score for {len(snapshot.ood.proto_logodds)} prototypes, bank has {snapshot.size}")
    if snapshot.cache_ok is not None and len(snapshot.cache_ok) != snapshot.size:
        raise ValueError(f"cache_ok for {len(snapshot.cache_ok)} prototypes, bank has {snapshot.size}")


def pack(array: np.ndarray, dtype: str) -> str:
    """Little-endian ``dtype`` bytes of ``array`` (flattened), base64 (the inverse of :func:`unpack`)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def scoring_table(items: np.ndarray, delta) -> np.ndarray:
    """``items`` ``[I, D]`` with an item delta (:class:`ItemDelta` or ``recsys.wire.ItemTableDelta``) added: a
    new array, the table the device scores with; ``ValueError`` naming what does not fit the table."""
    ids = np.asarray(delta.ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError("item delta: ids must be a list of item ids")
    if ((ids < 1) | (ids >= len(items))).any() or len(np.unique(ids)) != len(ids):
        raise ValueError(f"item delta: ids must be distinct item ids in 1..{len(items) - 1}")
    if delta.encoding not in ("fp32", "fp16"):
        raise ValueError(f"item delta: encoding must be fp32 or fp16, not {delta.encoding!r}")
    rows = unpack(delta.rows, "<f4" if delta.encoding == "fp32" else "<f2", (len(ids), items.shape[1]))
    if not np.isfinite(rows).all():
        raise ValueError("item delta: rows must be finite")
    out = np.array(items, dtype=np.float32, copy=True)
    out[ids] += rows
    return out


def unpack(data: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Base64 little-endian ``dtype`` values as float32 ``shape``; a wrong length raises ``ValueError``."""
    raw = base64.b64decode(data.encode(), validate=True)
    a = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    if a.size != int(np.prod(shape)):
        raise ValueError(f"packed data holds {a.size} values, expected {int(np.prod(shape))} for shape {shape}")
    return a.astype(np.float32).reshape(shape)


@dataclass(frozen=True)
class Edit:
    """One device's head edit: per layer ``dW`` ``[D, D]`` and ``db`` ``[D]`` (``None``: unedited), and its clip."""

    dW: list[np.ndarray | None]
    db: list[np.ndarray | None]
    clip: float = 1.0

    def stacked(self, n_layers: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """``([L, D, D], [L, D])`` clipped to ``±clip``, zeros where a layer is unedited (what the graph adds)."""
        if len(self.dW) != n_layers or len(self.db) != n_layers:
            raise ValueError(f"edit of {len(self.dW)} layers, the head has {n_layers}")
        dw = np.zeros((n_layers, dim, dim), np.float32)
        db = np.zeros((n_layers, dim), np.float32)
        for layer, (w, b) in enumerate(zip(self.dW, self.db)):
            if w is not None:
                dw[layer] = np.clip(w.reshape(dim, dim), -self.clip, self.clip)
            if b is not None:
                db[layer] = np.clip(b.reshape(dim), -self.clip, self.clip)
        return dw, db


@dataclass(frozen=True)
class Payload:
    """An edit as the cloud sends it (``POST /v1/edits``); see :class:`recsys.wire.EditPayload`."""

    version: str
    prototype_id: int | None = None
    clip: float = 1.0
    encoding: str = "json"
    n_layers: int = 0
    dim: int = 0
    data: str | None = None
    layers: list[dict] = field(default_factory=list)
    parts: list[str] | None = None  # fp32 / fp16: the parts in ``data`` (None: every dW and db)

    @staticmethod
    def from_dict(data: dict) -> Payload:
        _check_keys(data, _PAYLOAD_KEYS, {"version"}, "edit payload")
        p = Payload(**data)
        if p.encoding not in ENCODINGS:
            raise ValueError(f"edit payload: unknown encoding {p.encoding!r} (known: {', '.join(ENCODINGS)})")
        if not p.clip > 0 or p.n_layers < 0 or p.dim < 0:
            raise ValueError("edit payload: clip must be > 0, n_layers and dim ≥ 0")
        p.check_parts()
        return p

    def check_parts(self) -> None:
        if self.parts is None:
            return
        if self.encoding not in ("fp32", "fp16"):
            raise ValueError(f"parts are for fp32 / fp16 edits, not {self.encoding!r}")
        names = part_names(self.n_layers)
        if not self.parts or [n for n in names if n in self.parts] != self.parts:
            raise ValueError(f"parts must be some of {names}, in that order, each once")

    def dense_edit(self) -> Edit | None:
        """A ``json`` / ``fp32`` / ``fp16`` edit as arrays (``None``: no edit)."""
        if self.encoding == "json":
            if not self.layers:
                return None
            for layer in self.layers:
                _check_keys(layer, {"dW", "db"}, set(), "layer edit")
            dw = [None if le.get("dW") is None else np.asarray(le["dW"], np.float32) for le in self.layers]
            db = [None if le.get("db") is None else np.asarray(le["db"], np.float32) for le in self.layers]
            return Edit(dw, db, self.clip)
        if self.data is None:
            return None
        d, n = self.dim, self.n_layers
        names = part_names(n) if self.parts is None else self.parts
        sizes = [d * d if name.startswith("dW") else d for name in names]
        flat = unpack(self.data, "<f4" if self.encoding == "fp32" else "<f2", (sum(sizes),))
        got = dict(zip(names, np.split(flat, np.cumsum(sizes)[:-1])))
        return Edit([None if got.get(f"dW.{i}") is None else got[f"dW.{i}"].reshape(d, d) for i in range(n)],
                    [got.get(f"db.{i}") for i in range(n)], self.clip)  # fmt: skip


@dataclass(frozen=True)
class Decoder:
    """The adapter's linear code → edit maps and the prototypes' codes (:class:`recsys.wire.EditDecoder`)."""

    n_layers: int
    dim: int
    code_dim: int
    clip: float
    residual_clip: float
    weights: np.ndarray  # [L, D·D + D, code_dim]
    biases: np.ndarray  # [L, D·D + D]
    centres: np.ndarray  # [K, L, code_dim]
    _centre_parts: dict[int, list[np.ndarray]] = field(default_factory=dict, init=False, repr=False, compare=False)

    @staticmethod
    def from_dict(data: dict) -> Decoder:
        _check_keys(data, _DECODER_KEYS, _DECODER_KEYS, "decoder")
        n, d, c, k = (int(data[key]) for key in ("n_layers", "dim", "code_dim", "n_prototypes"))
        out = d * d + d
        return Decoder(n, d, c, float(data["clip"]), float(data["residual_clip"]),
                       unpack(data["weights"], "<f4", (n, out, c)), unpack(data["biases"], "<f4", (n, out)),
                       unpack(data["centres"], "<f4", (k, n, c)))  # fmt: skip

    @property
    def n_prototypes(self) -> int:
        return len(self.centres)

    def parts(self, code: np.ndarray) -> list[np.ndarray]:
        """``clip(W_l z_l + b_l)`` as ``[dW_0, …, dW_{L-1}, db_0, …]`` for one code ``[L, code_dim]``."""
        raw = np.matmul(self.weights, code[..., None])[..., 0] + self.biases
        raw = np.clip(raw, -self.clip, self.clip)
        d = self.dim
        return [r[: d * d].reshape(d, d) for r in raw] + [r[d * d :] for r in raw]

    def centre_parts(self, k: int) -> list[np.ndarray]:
        """:meth:`parts` of prototype ``k``'s code, computed once per snapshot, not per ``code`` edit."""
        if k not in self._centre_parts:
            self._centre_parts[k] = self.parts(self.centres[k])
        return self._centre_parts[k]

    def decode(self, payload: Payload, prototypes: list[Edit | None]) -> Edit:
        """A ``code`` payload's edit; relative to prototype k: ``E_k + clamp(own − centre_k, ±residual_clip)``."""
        n = self.n_layers
        mine = self.parts(unpack(payload.data, "<f4", (n, self.code_dim)))
        k = payload.prototype_id
        if k is not None:
            if not 0 <= k < self.n_prototypes or k >= len(prototypes) or prototypes[k] is None:
                raise ValueError(f"prototype_id {k} is not in the cached bank")
            proto = prototypes[k].dW + prototypes[k].db
            theirs = self.centre_parts(k)
            r = self.residual_clip
            mine = [p + np.clip(m - t, -r, r) for p, m, t in zip(proto, mine, theirs)]
        return Edit(mine[:n], mine[n:], payload.clip)


@dataclass(frozen=True)
class OodRule:
    """The bank's out-of-distribution score (:class:`recsys.ood.OodScore`): ``w_e·H + w_p·logit(m_k) + bias``."""

    w_entropy: float
    w_proto: float
    bias: float
    proto_logodds: np.ndarray  # [K] float32
    threshold: float

    @staticmethod
    def from_dict(data: dict) -> OodRule:
        _check_keys(data, _OOD_KEYS, _OOD_KEYS, "ood")
        return OodRule(float(data["w_entropy"]), float(data["w_proto"]), float(data["bias"]),
                       np.asarray(data["proto_logodds"], np.float32), float(data["threshold"]))  # fmt: skip

    def flags(self, entropy: np.ndarray, protos: list[int]) -> list[bool]:
        """Per row: is its score (base entropy ``entropy`` ``[B]`` float32, nearest prototype) above the threshold?"""
        score = self.w_entropy * entropy + self.w_proto * self.proto_logodds[np.asarray(protos)] + self.bias
        return (score > np.float32(self.threshold)).tolist()


@dataclass(frozen=True)
class ItemDelta:
    """Rows the cloud adds to the device's scoring table (``recsys.wire.ItemTableDelta``, the same JSON)."""

    ids: list[int]
    rows: str  # base64 [M, D]
    encoding: str = "fp16"

    @staticmethod
    def from_dict(data: dict) -> ItemDelta:
        _check_keys(data, _ITEM_DELTA_KEYS, {"ids", "rows"}, "item delta")
        return ItemDelta(list(data["ids"]), str(data["rows"]), str(data.get("encoding", "fp16")))


@dataclass(frozen=True)
class Snapshot:
    """The prototype bank as a device caches it (:class:`recsys.wire.PrototypeSnapshot`, the same JSON)."""

    version: str
    dim: int
    signatures: np.ndarray  # [K, D] float32
    edits: list[Payload]
    ood: OodRule | None = None
    cache_ok: list[bool] | None = None
    decoder: Decoder | None = None
    item_delta: ItemDelta | None = None

    @staticmethod
    def from_dict(data: dict) -> Snapshot:
        data = {k: v for k, v in data.items() if k != "ood_threshold"}  # caches from before the OOD score
        _check_keys(data, _SNAPSHOT_KEYS, {"version", "dim"}, "prototype snapshot")
        sigs = np.asarray(data.get("signatures") or [], np.float32).reshape(-1, int(data["dim"]))
        ood, decoder, delta = data.get("ood"), data.get("decoder"), data.get("item_delta")
        return Snapshot(str(data["version"]), int(data["dim"]), sigs,
                        [Payload.from_dict(e) for e in data.get("edits") or []],
                        None if ood is None else OodRule.from_dict(ood), data.get("cache_ok"),
                        None if decoder is None else Decoder.from_dict(decoder),
                        None if delta is None else ItemDelta.from_dict(delta))  # fmt: skip

    @staticmethod
    def load(path: Path) -> Snapshot:
        return Snapshot.from_dict(json.loads(Path(path).read_text()))

    @property
    def size(self) -> int:
        return len(self.signatures)
