"""ONNX export of a device model (``persona export --format onnx``) and the check of the files against torch.

Two graphs, traced from the model's own code (:meth:`EditableSeqRec.last_state`, :class:`EditableHead`,
:meth:`EditableSeqRec.logits`, :func:`recsys.ood.entropy`) with the TorchScript exporter: the encoder
(item ids, lengths → user state) and the ranker (state, head edit, exclusions → scores, top-k, entropy).
The item table (LLM side views folded in) is an input of both and is written once beside them; the
graphs, their inputs and outputs: :mod:`persona_device.model`, which runs them without torch.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from persona_device.model import (
    ENCODER_FILE,
    FORMAT,
    META_FILE,
    RANKER_FILE,
    TABLE_FILE,
    TOKENS_FILE,
    ModelMeta,
    OnnxModel,
)
from persona_device.runtime import OnnxDeviceRuntime
from recsys.atomic_io import atomic_write_bytes, atomic_write_text
from recsys.checkpoint import load_checkpoint
from recsys.models import EditableSeqRec, HeadEdit, score_with_edit
from recsys.ood import entropy

SCORE_TOL = 1e-4  # the largest score difference (any item, any row) an export may show against torch


class OnnxExportOptions(BaseModel):
    """How the graphs are exported."""

    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(100, ge=1, description="the ranker's top-k width (a larger k is cut from its scores)")
    opset: int = Field(17, ge=17, description="ONNX opset (17: LayerNormalization)")


class _Encoder(nn.Module):
    def __init__(self, model: EditableSeqRec):
        super().__init__()
        self.model = model

    def forward(self, item_ids: torch.Tensor, lengths: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.last_state(item_ids, lengths, items)


class _Ranker(nn.Module):
    def __init__(self, model: EditableSeqRec, top_k: int):
        super().__init__()
        self.model, self.top_k = model, top_k

    def forward(self, state, dW, db, exclude, items):  # the edit as dense per-layer arrays, already clipped
        layers = range(len(self.model.head.layers))
        edit = HeadEdit([dW[:, i] for i in layers], [db[:, i] for i in layers], clip=float("inf"))  # clipped
        logits = self.model.logits(self.model.head(state, edit), items)
        scores = logits.masked_fill(exclude, float("-inf"))
        top_scores, top_ids = torch.topk(scores, self.top_k, dim=1)
        return scores, top_scores, top_ids, entropy(logits)


def _trace(module: nn.Module, args: tuple, names: tuple[list[str], list[str]], dynamic: dict, opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated (docs/device_runtime.md: why it, not dynamo); the
        # advanced-indexing note concerns negative indices, which the graphs never hold
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        # nn.GRU's own argument checks compare sizes the model fixes; its zero initial state follows the batch in
        # the graph (tested at batch 1, 512 and the rest)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="torch.nn.modules.rnn")
        warnings.filterwarnings("ignore", message=".*batch_size other than 1, with a variable length with GRU.*")
        torch.onnx.export(module.eval(), args, buf, input_names=names[0], output_names=names[1],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)  # fmt: skip
    return buf.getvalue()


def _encoder_graph(model: EditableSeqRec, items: torch.Tensor, opset: int) -> bytes:
    T = model.max_seq_len
    ids = torch.randint(1, model.n_items, (2, T), generator=torch.Generator().manual_seed(0))  # (the values: any)
    lengths = torch.tensor([T, 3])
    names = (["item_ids", "lengths", "items"], ["state"])
    dynamic = {"item_ids": {0: "batch", 1: "width"}, "lengths": {0: "batch"}, "state": {0: "batch"}}
    return _trace(_Encoder(model), (ids, lengths, items), names, dynamic, opset)


def _ranker_graph(model: EditableSeqRec, items: torch.Tensor, top_k: int, opset: int) -> bytes:
    n_layers, dim = len(model.head.layers), model.head.dim
    args = (torch.zeros(2, dim), torch.zeros(2, n_layers, dim, dim), torch.zeros(2, n_layers, dim),
            torch.zeros(2, model.n_items, dtype=torch.bool), items)  # fmt: skip
    names = (["state", "dW", "db", "exclude", "items"], ["scores", "top_scores", "top_ids", "entropy"])
    dynamic = {name: {0: "batch"} for name in [*names[0][:4], *names[1]]}
    return _trace(_Ranker(model, top_k), args, names, dynamic, opset)


def export_onnx(
    model: EditableSeqRec, out_dir: Path, item_tokens: np.ndarray, dataset: str, options: OnnxExportOptions
) -> Path:
    """Write the encoder and ranker graphs of ``model`` (side views folded), its item table and tokens, and
    ``device.json`` last (a complete export); returns ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / META_FILE).unlink(missing_ok=True)
    device = (model.folded() if model.side is not None else model).eval()
    items = device.item_embeddings.detach().clone()
    top_k = min(options.top_k, device.n_items)
    atomic_write_bytes(out_dir / ENCODER_FILE, _encoder_graph(device, items, options.opset))
    atomic_write_bytes(out_dir / RANKER_FILE, _ranker_graph(device, items, top_k, options.opset))
    buf = io.BytesIO()
    np.save(buf, items.numpy(), allow_pickle=False)
    atomic_write_bytes(out_dir / TABLE_FILE, buf.getvalue())
    atomic_write_text(out_dir / TOKENS_FILE, "\n".join(map(str, item_tokens)) + "\n")
    meta = ModelMeta(FORMAT, device.spec.name, dataset, device.n_items, device.max_seq_len, device.head.dim,
                     len(device.head.layers), top_k, options.opset)  # fmt: skip
    atomic_write_text(out_dir / META_FILE, meta.to_json())
    return out_dir


def export_checkpoint_onnx(checkpoint_dir: Path, out_dir: Path, options: OnnxExportOptions) -> Path:
    """:func:`export_onnx` of a checkpoint directory (``model.pt`` + ``model.yaml`` + ``items.txt``)."""
    model, meta, tokens = load_checkpoint(checkpoint_dir)
    return export_onnx(model, out_dir, tokens, meta.dataset, options)


@dataclass(frozen=True)
class ExportCheck:
    """ONNX vs torch on the same rows: how many top-``k`` lists (ids, in order) are identical, how many differ
    only by swapping items whose torch scores tie within :data:`SCORE_TOL`, and the largest score gap."""

    rows: int
    k: int
    identical: int
    tie_swaps: int
    max_score_diff: float

    @property
    def mismatches(self) -> int:
        """Rows whose top-k differ beyond tied scores."""
        return self.rows - self.identical - self.tie_swaps

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.max_score_diff <= SCORE_TOL

    def summary(self) -> str:
        return (f"{self.rows:,} rows: top-{self.k} identical on {self.identical:,}, {self.tie_swaps} differ only "
                f"by items whose scores tie within {SCORE_TOL:.0e}, {self.mismatches} otherwise; "
                f"max |score difference| {self.max_score_diff:.1e}")  # fmt: skip

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "mismatches": self.mismatches, "ok": self.ok})


def _batch_check(model: EditableSeqRec, runtime: OnnxDeviceRuntime, seq: torch.Tensor, length: torch.Tensor,
                 k: int) -> tuple[int, int, float]:  # fmt: skip
    """(identical top-k, tie swaps, largest finite score difference) of one batch of rows."""
    want = score_with_edit(model, seq, length).numpy()
    states = runtime.user_states([row[:n] for row, n in zip(seq.tolist(), length.tolist())])
    got = runtime.model.rank(states, *runtime.model.no_edit(len(states)), np.zeros(want.shape, bool))
    top = torch.topk(torch.from_numpy(want), k, dim=1)
    same = (got.top_ids[:, :k] == top.indices.numpy()).all(1)
    # ONNX's list is a valid torch top-k where torch scores each of its items as its own k-th best, within the tie
    tied = (np.abs(np.take_along_axis(want, got.top_ids[:, :k], 1) - top.values.numpy()) <= SCORE_TOL).all(1)
    finite = np.isfinite(want)
    return int(same.sum()), int((tied & ~same).sum()), float(np.abs(got.scores[finite] - want[finite]).max())


def check_export(
    model: EditableSeqRec, export_dir: Path, item_seq: torch.Tensor, item_len: torch.Tensor,
    k: int = 10, batch_size: int = 512,
) -> ExportCheck:  # fmt: skip
    """Rank every row (right-padded ``item_seq``, ``item_len`` items each) with ``model`` and with the export
    on onnxruntime (through :class:`persona_device.runtime.OnnxDeviceRuntime`), base head, no exclusions."""
    runtime = OnnxDeviceRuntime(OnnxModel(export_dir))
    identical, ties, worst = 0, 0, 0.0
    for start in range(0, len(item_seq), batch_size):
        rows = slice(start, start + batch_size)
        same, tied, gap = _batch_check(model, runtime, item_seq[rows], item_len[rows], k)
        identical, ties, worst = identical + same, ties + tied, max(worst, gap)
    return ExportCheck(len(item_seq), k, identical, ties, worst)
