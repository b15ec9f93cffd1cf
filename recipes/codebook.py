"""``codebook``: encode a dataset's items with the configured backbone and build the semantic codebook.

Artifacts go to :func:`recsys.run_layout.codebook_dir` (FAISS index, semantic IDs, metadata, item
embeddings, the device's item side file) and the quality report to ``<reports_dir>/codebook/<dataset>``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codebook import SemanticCodebook, metrics
from codebook.report import quality_markdown
from llm_cloud.backbones import build_backbone
from llm_cloud.pipeline import encode_items
from recipes.config import RecipeConfig
from recsys import run_layout
from recsys.experiment import load_dataset_split
from recsys.item_side import save_item_side


@dataclass
class CodebookResult:
    directory: Path  # the codebook artifacts
    report: dict  # quality metrics + timings (also in report_stem.json)
    report_stem: Path  # <reports_dir>/codebook/<dataset> (.json / .md)


def has_codebook(cfg: RecipeConfig) -> bool:
    return (run_layout.codebook_dir(cfg.output_dir, cfg.dataset) / "meta.json").is_file()


def codebook(cfg: RecipeConfig) -> CodebookResult:
    """Encode the items (text from the training period only), build and save the codebook, report its quality.

    Raises the backbone's, the codebook's or the item context's errors as they are.
    """
    backbone = build_backbone(cfg.backbone)
    cutoff = load_dataset_split(cfg).train_cutoff  # item text from after the training period stays out
    t0 = time.perf_counter()
    enc = encode_items(cfg.dataset, cfg.data, cfg.context, backbone, cutoff)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    book = SemanticCodebook.build(enc.embeddings, cfg.codebook, item_ids=enc.item_ids)
    build_s = time.perf_counter() - t0
    report = metrics.quality(book, enc.embeddings)
    out = book.save(run_layout.codebook_dir(cfg.output_dir, cfg.dataset))
    np.save(out / run_layout.ITEM_EMBEDDINGS_FILE, enc.embeddings, allow_pickle=False)
    save_item_side(out / run_layout.ITEM_SIDE_FILE, enc.item_ids, enc.embeddings, book.semantic_ids)
    (out / "backbone.json").write_text(json.dumps({"name": backbone.name, "key": backbone.key}, indent=1))
    report.update({
        "dataset": cfg.dataset,
        "backbone": backbone.name,
        "backbone_key": backbone.key,
        "fused_image": enc.fused_image,
        "text_cutoff": cutoff,
        "encode_s": round(encode_s, 2),
        "build_s": round(build_s, 2),
    })
    stem = run_layout.codebook_report_stem(cfg.reports_dir, cfg.dataset)
    stem.parent.mkdir(parents=True, exist_ok=True)
    (stem.parent / f"{stem.name}.json").write_text(json.dumps(report, indent=1))
    (stem.parent / f"{stem.name}.md").write_text(quality_markdown(report, f"Semantic codebook: {cfg.dataset}"))
    return CodebookResult(out, report, stem)
