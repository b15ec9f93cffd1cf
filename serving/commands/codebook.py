"""``persona codebook``: encode a dataset's items with the configured backbone and build the semantic codebook.

Artefacts go to ``<output_dir>/<dataset>/codebook/`` (FAISS index, semantic IDs, metadata, item
embeddings) and the quality report to ``<reports_dir>/codebook/<dataset>.json`` and ``.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from codebook import CodebookError, SemanticCodebook
from codebook.report import quality_markdown
from llm_cloud.backbones import BackboneError, build_backbone
from llm_cloud.context import ContextError
from llm_cloud.pipeline import codebook_dir, encode_items
from recsys.experiment import load_dataset_split
from recsys.item_side import SIDE_FILE, save_item_side
from serving.commands import CliError, add_common
from serving.config import load_app_config


def add_parser(sub) -> None:
    p = sub.add_parser("codebook", help="encode items with the LLM backbone and build the semantic codebook")
    add_common(p)
    p.set_defaults(func=run)


def expand_shorthand(overrides: list[str]) -> list[str]:
    """``backbone=hf`` → ``backbone.name=hf``, so it merges with the YAML section and other ``backbone.*`` keys."""
    return [f"backbone.name={o.split('=', 1)[1]}" if o.startswith("backbone=") else o for o in overrides]


def run(args) -> int:
    cfg = load_app_config(args.config, expand_shorthand(args.overrides))
    try:
        backbone = build_backbone(cfg.backbone)
        cutoff = load_dataset_split(cfg).train_cutoff  # item text from after the training period stays out
        t0 = time.perf_counter()
        enc = encode_items(cfg.dataset, cfg.data, cfg.context, backbone, cutoff)
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        book = SemanticCodebook.build(enc.embeddings, cfg.codebook, item_ids=enc.item_ids)
        build_s = time.perf_counter() - t0
        report = book.quality(enc.embeddings)
    except (BackboneError, CodebookError, ContextError) as exc:
        raise CliError(str(exc)) from exc
    out = book.save(codebook_dir(cfg.output_dir, cfg.dataset))
    np.save(out / "item_embeddings.npy", enc.embeddings, allow_pickle=False)
    save_item_side(out / SIDE_FILE, enc.item_ids, enc.embeddings, book.semantic_ids)  # the device model's side data
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
    reports = Path(cfg.reports_dir) / "codebook"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{cfg.dataset}.json").write_text(json.dumps(report, indent=1))
    (reports / f"{cfg.dataset}.md").write_text(quality_markdown(report, f"Semantic codebook: {cfg.dataset}"))
    k = cfg.codebook.recall_k
    util = ", ".join(f"{100 * lv['utilisation']:.0f}%" for lv in report["per_level"])
    print(
        f"{cfg.dataset}: {report['n_items']} items, {report['levels']} levels x {cfg.codebook.bits} bits; "
        f"utilisation {util}; collisions learned {100 * report['collision_rate_learned']:.2f}% / "
        f"full {100 * report['collision_rate']:.2f}%; recon {report['reconstruction']['relative']:.3f}; "
        f"recall@{k} {report[f'recall@{k}']:.3f}\n{out}\n{reports / cfg.dataset}.md"
    )
    return 0
