"""What a service loads at start: the base checkpoint, its item tokens and the items' titles."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys import run_layout
from recsys.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint
from recsys.datasets import read_items
from recsys.models import EditableSeqRec
from serving.config import AppConfig

log = logging.getLogger(__name__)


def checkpoint_dir(cfg: AppConfig) -> Path:
    """``serve.checkpoint``, else the main job's ``<output_dir>/<dataset>/<model>/seed<serve.seed>``."""
    return Path(cfg.serve.checkpoint) if cfg.serve.checkpoint else cfg.run_dir(cfg.serve.seed)


@dataclass
class Artifacts:
    directory: Path
    model: EditableSeqRec
    meta: CheckpointMeta
    tokens: np.ndarray  # item id → token (id 0 = padding)
    titles: list[str | None]  # item id → title (None when unknown)


def require_checkpoint(cfg: AppConfig) -> Path:
    """The checkpoint dir to serve; a :class:`CheckpointError` saying what to run when it is missing."""
    directory = checkpoint_dir(cfg)
    if run_layout.read_manifest(directory).checkpoint is None or not (directory / run_layout.CHECKPOINT_MARK).is_file():
        raise CheckpointError(f"no trained model at {directory}: run `make run` first (or set serve.checkpoint=DIR)")
    return directory


def load_artifacts(cfg: AppConfig) -> Artifacts:
    directory = require_checkpoint(cfg)
    model, meta, tokens = load_checkpoint(directory)
    titles: list[str | None] = [None] * len(tokens)
    items_dir = Path(cfg.data.workdir) / meta.dataset
    try:
        table = read_items(items_dir, meta.dataset)
    except FileNotFoundError:
        log.warning("no item file in %s: rankings carry no titles", items_dir)
    else:
        if "title" in table.columns:
            by_token = dict(zip(table["item_id"], table["title"]))
            titles = [by_token.get(str(t)) or None for t in tokens]
    titles[0] = None
    return Artifacts(directory, model, meta, tokens, titles)
