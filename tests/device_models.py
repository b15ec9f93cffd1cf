"""Real device models for the ONNX tests: SASRec / GRU4Rec trained one epoch on ml-100k (ID-only, a few seconds
each), saved as checkpoints and exported to ONNX once per test session (shared by tests/recsys and
tests/persona_device)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recsys.checkpoint import save_checkpoint
from recsys.config import load_config
from recsys.models import EditableSeqRec
from recsys.onnx_export import OnnxExportOptions, export_onnx
from recsys.train import train_model


@dataclass(frozen=True)
class Trained:
    model: EditableSeqRec
    tokens: np.ndarray
    output_dir: Path  # runs root: <output_dir>/ml-100k/<name>/seed0 is the checkpoint
    export_dir: Path


_TRAINED: dict[str, Trained] = {}


def overrides(workdir: Path, output_dir: Path, name: str) -> list[str]:
    return [f"data.workdir={workdir}", f"output_dir={output_dir}", f"model={name}", "seeds=[0]", "train.epochs=1",
            "model_params.item_side=none"]  # fmt: skip


def trained(name: str, ml100k_split, root: Path) -> Trained:
    """``name`` trained on the session's ml-100k split (``ml100k_split`` fixture), checkpointed and exported."""
    if name not in _TRAINED:
        torch.set_num_threads(1)
        base_cfg, split = ml100k_split
        output_dir = root / "runs"
        cfg = load_config(overrides=overrides(base_cfg.data.workdir, output_dir, name))
        model = train_model(split, cfg, 0, progress=False).model.eval()
        save_checkpoint(cfg.run_dir(0), model, cfg.dataset, split.item_tokens)
        export_dir = export_onnx(model, root / f"{name}-onnx", split.item_tokens, cfg.dataset, OnnxExportOptions())
        _TRAINED[name] = Trained(model, split.item_tokens, output_dir, export_dir)
    return _TRAINED[name]
