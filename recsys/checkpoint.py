"""Checkpoints: ``model.pt`` (a state_dict) + ``model.yaml`` (config) + ``items.txt`` (item tokens).

Every file is written to a temporary name and renamed, so a crashed run never leaves a half-written
checkpoint; ``model.yaml`` is written last and marks the checkpoint complete.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from recsys.config import ModelConfig
from recsys.models import EditableSeqRec


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        model_params=ModelConfig(**raw["model_params"]),
        extra=raw.get("extra") or {},
    )
    model = EditableSeqRec(meta.model, meta.model_params, meta.n_items, meta.max_seq_len)
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    tokens = np.asarray((directory / "items.txt").read_text().splitlines())
    return model, meta, tokens
