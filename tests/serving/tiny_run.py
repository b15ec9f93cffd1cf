"""A tiny real checkpoint for the serving tests that need a model but not a trained one: a random-weight ID-only
SASRec over the first 60 ml-100k items (seconds to build), saved where ``serve.checkpoint`` points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recsys.checkpoint import save_checkpoint
from recsys.datasets import prepare
from recsys.models import EditableSeqRec
from serving.config import AppConfig, load_app_config

N_ITEMS = 61  # the padding id and ml-100k items "1" .. "60"
TOKENS = np.array(["[PAD]", *(str(i) for i in range(1, N_ITEMS))])


def tiny_config(root: Path, workdir: Path, *overrides: str) -> AppConfig:
    """An app config serving the tiny checkpoint under ``root`` (state files there too), titles from ``workdir``."""
    return load_app_config(overrides=[
        f"output_dir={root / 'runs'}", f"data.workdir={workdir}", f"reports_dir={root / 'reports'}",
        f"serve.checkpoint={root / 'ckpt'}", "model_params.item_side=none", "model_params.hidden_size=16",
        "model_params.inner_size=32", "data.max_seq_len=10", "serve.http.access_log=false",
        "serve.cloud.reload_poll_s=0", *overrides,
    ])


def tiny_checkpoint(cfg: AppConfig, seed: int = 0) -> Path:
    prepare("ml-100k", cfg.data)  # the item file the titles come from
    torch.manual_seed(seed)
    model = EditableSeqRec(cfg.model, cfg.model_params, N_ITEMS, cfg.data.max_seq_len).eval()
    return save_checkpoint(Path(cfg.serve.checkpoint), model, "ml-100k", TOKENS)
