"""Checkpoints: ``model.pt`` (a state_dict) + ``model.yaml`` (config) + ``items.txt`` (item tokens).

Every file is written to a temporary name and renamed, so a crashed run never leaves a half-written
checkpoint; ``model.yaml`` is written last and marks the checkpoint complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from recsys.atomic_io import atomic_torch_save, atomic_write_text
from recsys.config import ModelConfig
from recsys.models import EditableSeqRec, side_from_state


@dataclass
class CheckpointMeta:
    model: str
    dataset: str
    n_items: int
    max_seq_len: int
    model_params: ModelConfig
    extra: dict

    def to_yaml(self) -> str:
        data = {
            "model": self.model,
            "dataset": self.dataset,
            "n_items": self.n_items,
            "max_seq_len": self.max_seq_len,
            "model_params": self.model_params.model_dump(),
            "extra": self.extra,
        }
        return yaml.safe_dump(data, sort_keys=False)


def save_checkpoint(
    directory: Path, model: EditableSeqRec, dataset: str, item_tokens: np.ndarray, extra: dict | None = None
) -> Path:
    """Write the checkpoint of ``model`` into ``directory`` atomically; returns the directory."""
    directory = Path(directory)
    (directory / "model.yaml").unlink(missing_ok=True)  # incomplete until the YAML is back
    meta = CheckpointMeta(
        model=model.spec.name,
        dataset=dataset,
        n_items=model.n_items,
        max_seq_len=model.max_seq_len,
        model_params=model.model_config,
        extra=extra or {},
    )
    atomic_torch_save(model.state_dict(), directory / "model.pt")
    atomic_write_text(directory / "items.txt", "\n".join(map(str, item_tokens)) + "\n")
    atomic_write_text(directory / "model.yaml", meta.to_yaml())
    return directory


class CheckpointError(RuntimeError):
    pass


def load_checkpoint(directory: Path) -> tuple[EditableSeqRec, CheckpointMeta, np.ndarray]:
    """Rebuild the model from ``model.yaml`` and load ``model.pt`` (weights only, no pickles)."""
    directory = Path(directory)
    meta_path = directory / "model.yaml"
    if not meta_path.is_file():
        raise CheckpointError(f"no complete checkpoint in {directory} (model.yaml missing)")
    raw = yaml.safe_load(meta_path.read_text())
    meta = CheckpointMeta(
        model=raw["model"],
        dataset=raw["dataset"],
        n_items=int(raw["n_items"]),
        max_seq_len=int(raw["max_seq_len"]),
        model_params=ModelConfig(**{"item_side": "none", **raw["model_params"]}),  # older checkpoints: ID-only
        extra=raw.get("extra") or {},
    )
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    model = EditableSeqRec(meta.model, meta.model_params, meta.n_items, meta.max_seq_len, side_from_state(state))
    model.load_state_dict(state)
    model.eval()
    tokens = np.asarray((directory / "items.txt").read_text().splitlines())
    return model, meta, tokens


Loaded = tuple[EditableSeqRec, CheckpointMeta, np.ndarray]


def checkpoint_reader() -> Callable[[Path], Loaded]:
    """:func:`load_checkpoint` that loads each directory once (by its resolved path): the readers of one build
    (the served device model, the teacher's members, the adapter's base) share one model per checkpoint."""
    loaded: dict[Path, Loaded] = {}

    def read(directory: Path) -> Loaded:
        key = Path(directory).resolve()
        if key not in loaded:
            loaded[key] = load_checkpoint(key)
        return loaded[key]

    return read


def export_for_device(checkpoint_dir: Path, out_dir: Path) -> Path:
    """Write the device's copy of a checkpoint into ``out_dir``: the side views folded into the item table
    (:meth:`EditableSeqRec.folded`: the same scores, an ID-only-sized ``model.pt``), the same item tokens."""
    model, meta, tokens = load_checkpoint(checkpoint_dir)
    folded = model.folded() if model.side is not None else model
    extra = {**meta.extra, "folded_from": model.model_config.item_side} if model.side is not None else meta.extra
    return save_checkpoint(Path(out_dir), folded, meta.dataset, tokens, extra)
