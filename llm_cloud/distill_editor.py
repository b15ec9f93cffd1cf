"""The cloud's distilled edit as an :class:`~llm_cloud.editor.Editor` (``serve.cloud.edit_source=distilled``).

It holds the device's model (the served checkpoint) and the teacher (:class:`~llm_cloud.teacher.EnsembleTeacher`)
and answers each batch of devices with one teacher pass and one batched solve
(:func:`llm_cloud.distill.distilled_edit`, the function ``benchmarks/distill.py`` measures offline): each
history gets the last head layer's bias edit that brings the device to the teacher, ``D`` floats. On the wire
it is a sparse ``fp32`` / ``fp16`` payload (``parts=["db.<L-1>"]``; a device that asks for ``code`` gets
``fp32``: there is no code to send) or ``json``. The bank holds no prototypes (no cached edit was measured to beat
the base head); it carries the checkpoint's item delta where ``make run`` wrote one (:mod:`recipes.item_delta`):
the device scores with table + delta, with or without the cloud, and the per-request edits are solved against
that table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from llm_cloud.distill import DistillConfig, distilled_edit
from llm_cloud.editor import EditAsk, edit_one, edit_row, padded
from llm_cloud.teacher import EnsembleTeacher
from persona_device.wire import scoring_table, unpack
from recsys import run_layout
from recsys.checkpoint import CheckpointError, Loaded, load_checkpoint
from recsys.models import EditableSeqRec, HeadEdit
from recsys.wire import EditPayload, ItemTableDelta, PrototypeSnapshot


class DistilledEditor:
    """Per-request distilled edits of ``device`` toward ``teacher`` (which must read the device's whole window)."""

    def __init__(self, device: EditableSeqRec, teacher: EnsembleTeacher, cfg: DistillConfig, version: str,
                 item_delta: ItemTableDelta | None = None):  # fmt: skip
        if teacher.n_items != device.n_items:
            raise ValueError(f"the teacher scores {teacher.n_items} items, the device {device.n_items}")
        short = [name for m, name in zip(teacher.models, teacher.names) if m.max_seq_len < device.max_seq_len]
        if short:
            raise ValueError(f"teacher members {short} read fewer items than the device ({device.max_seq_len})")
        self.device, self.teacher, self.cfg, self.version = device.eval(), teacher, cfg, version
        self._snapshot = PrototypeSnapshot(version=version, dim=device.head.dim, item_delta=item_delta)
        # the table the device scores with once it holds this snapshot, decoded as the device decodes it
        self.items = None if item_delta is None else torch.from_numpy(
            scoring_table(device.item_embeddings.detach().numpy(), item_delta))

    @classmethod
    def load(cls, device_dir: Path, teacher_dirs: Sequence[Path], cfg: DistillConfig,
             read: Callable[[Path], Loaded] = load_checkpoint) -> DistilledEditor:  # fmt: skip
        """The served checkpoint and the teacher's, each read once with ``read`` (a member that is the device's own
        checkpoint is the same model); a teacher that cannot teach this device (another vocabulary, a shorter
        window, a missing checkpoint) is a :class:`CheckpointError` naming it."""
        device_dir = Path(device_dir)
        teacher_dirs = [Path(p) for p in teacher_dirs]
        if not teacher_dirs:
            raise CheckpointError("the distilled edit needs a teacher: set serve.cloud.teacher=[DIR,...] or train one "
                                  "(`make run`)")  # fmt: skip
        device, _, tokens = read(device_dir)
        try:
            delta = read_item_delta(device_dir, device.head.dim)
            if delta is not None:
                scoring_table(device.item_embeddings.detach().numpy(), delta)  # checked here, named as the file's
        except ValueError as exc:
            raise CheckpointError(f"{run_layout.item_delta_file(device_dir)}: {exc}") from exc
        try:
            teacher = EnsembleTeacher.load(teacher_dirs, read=read)
            teacher.check_serves(tokens, f"the served checkpoint {device_dir}")
            return cls(device, teacher, cfg, version(device_dir, teacher_dirs, cfg), delta)
        except ValueError as exc:
            raise CheckpointError(f"serve.cloud.teacher cannot teach this device: {exc}") from exc

    def solve(self, seq: torch.Tensor, length: torch.Tensor, states: torch.Tensor | None = None) -> HeadEdit:
        """The batched edit (last layer's bias ``[B, D]``) for right-padded histories ``seq`` of ``length`` items
        whose user states are ``states`` (None: encoded here)."""
        with torch.no_grad():
            target = self.teacher.log_probs(seq, length)
        with torch.enable_grad():  # the solve differentiates in δ, whatever the caller's mode
            return distilled_edit(self.device, seq, length, target, self.cfg, states, self.items)

    def states(self, asks: list[EditAsk], seq: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """``[B, D]``: the state each device sent for its history, the device model's own where it sent none."""
        out = torch.empty(len(asks), self.device.head.dim)
        missing = [row for row, ask in enumerate(asks) if ask.state is None]
        if missing:
            with torch.no_grad():
                out[missing] = self.device.user_state(seq[missing], length[missing])
        for row, ask in enumerate(asks):
            if ask.state is not None:
                out[row] = torch.as_tensor(ask.state, dtype=torch.float32)
        return out

    def edit_many(self, asks: list[EditAsk]) -> list[EditPayload]:
        """One teacher pass and one solve for every ask (each row the edit its history gets alone)."""
        n, T = self.device.n_items, self.device.max_seq_len
        seq, length = padded([[i for i in ask.item_ids if 0 < i < n][-T:] for ask in asks], T)
        length = length.clamp(min=1)  # an empty history reads as the device's: padding, length 1
        edit = self.solve(seq, length, self.states(asks, seq, length))
        return [EditPayload.from_head_edit(edit_row(edit, row), self.version, None, wire_encoding(ask.encoding))
                for row, ask in enumerate(asks)]  # fmt: skip

    edit = edit_one

    def snapshot(self) -> PrototypeSnapshot:
        return self._snapshot


def wire_encoding(asked: str) -> str:
    """What a distilled edit is sent as: as asked, except ``code`` (nothing to decode it with) → ``fp32``."""
    return "fp32" if asked == "code" else asked


def read_item_delta(device_dir: Path, dim: int) -> ItemTableDelta | None:
    """The checkpoint's item delta (``item-delta.json``, written by ``make run``) as the device gets it: fp16 rows
    (the editor solves against exactly that table); None without one."""
    path = run_layout.item_delta_file(device_dir)
    if not path.is_file():
        return None
    delta = ItemTableDelta.model_validate_json(path.read_text())
    rows = unpack(delta.rows, "<f4" if delta.encoding == "fp32" else "<f2", (len(delta.ids), dim))
    return ItemTableDelta.of(torch.tensor(delta.ids), torch.from_numpy(rows), "fp16")


def version(device_dir: Path, teacher_dirs: Sequence[Path], cfg: DistillConfig) -> str:
    """``distilled-<digest>`` of the device's and the teacher's weights, the device's item delta and the solver
    settings."""
    h = hashlib.sha256(cfg.model_dump_json().encode())
    for path in [Path(device_dir), *teacher_dirs]:
        h.update((Path(path) / "model.pt").read_bytes())
    delta = run_layout.item_delta_file(device_dir)
    if delta.is_file():
        h.update(delta.read_bytes())
    return "distilled-" + h.hexdigest()[:12]
