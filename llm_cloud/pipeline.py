"""Prepare → item context → encode (cached) → semantic codebook, for one dataset."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from codebook import CodebookConfig, CodebookError, SemanticCodebook
from llm_cloud.backbones import Backbone, BackboneConfig
from llm_cloud.context_text import ContextConfig, fuse_image, item_texts
from recsys import run_layout
from recsys.config import DataConfig
from recsys.datasets import prepare, read_arrays, read_items

log = logging.getLogger(__name__)


class PipelineConfig(Protocol):
    """The config sections this pipeline reads (``serving.config.AppConfig`` has them all)."""

    data: DataConfig
    backbone: BackboneConfig
    context: ContextConfig
    codebook: CodebookConfig


@dataclass
class ItemEmbeddings:
    """Item ids, their context texts and embeddings (rows aligned with the dataset's item table)."""

    item_ids: list[str]
    texts: list[str]
    embeddings: np.ndarray  # float32 [n_items, d]; text only, or text ⊕ image for datasets with images
    fused_image: bool
    image: np.ndarray | None = None  # the shipped image features when fused (rows aligned)


def encode_items(
    dataset: str, data: DataConfig, context: ContextConfig, backbone: Backbone, cutoff: float | None = None
) -> ItemEmbeddings:
    """Prepare ``dataset`` (if needed), build item texts, encode them, fuse shipped image features.

    ``cutoff`` (the split's ``train_cutoff``): timestamped item text after it is left out.
    """
    out_dir = prepare(dataset, data)
    items = read_items(out_dir, dataset, cutoff)
    texts = item_texts(items, data.text_template, context)
    emb = backbone.encode(texts)
    image = read_arrays(out_dir).get("image_features")
    fused = image is not None and context.image_weight > 0
    if fused:
        emb = fuse_image(emb, image, context.image_weight)
    log.info("%s: %d items encoded by %s → %s%s", dataset, len(texts), backbone.name, emb.shape,
             " (text ⊕ image)" if fused else "")
    return ItemEmbeddings(items["item_id"].tolist(), texts, emb, fused, image if fused else None)


def load_item_codebook(output_dir: str | Path, dataset: str) -> tuple[list[str], np.ndarray, SemanticCodebook]:
    """Item ids, item embeddings and codebook as saved by ``persona codebook`` (no model is loaded)."""
    directory = run_layout.codebook_dir(output_dir, dataset)
    book = SemanticCodebook.load(directory)
    path = directory / run_layout.ITEM_EMBEDDINGS_FILE
    if not path.is_file():
        raise CodebookError(f"{directory} lacks {path.name}: run `persona codebook dataset={dataset}`")
    emb = np.load(path, allow_pickle=False)
    if emb.shape != (len(book.item_ids), book.dim):
        raise CodebookError(f"{path}: shape {emb.shape} does not match the codebook's items/dim")
    return book.item_ids, emb, book
