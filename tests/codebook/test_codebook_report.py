"""codebook.report: the Markdown of a codebook quality report (a real small codebook's)."""

from __future__ import annotations

import numpy as np

from codebook import CodebookConfig, SemanticCodebook
from codebook.metrics import quality
from codebook.report import quality_markdown


def _report() -> dict:
    x = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
    cfg = CodebookConfig(levels=1, max_levels=3, bits=4, max_collision_rate=0.0, recall_k=5, recall_queries=50)
    return quality(SemanticCodebook.build(x, cfg), x)


def test_the_markdown_has_the_headline_numbers_and_one_row_per_level():
    report = _report()
    md = quality_markdown(report, "Semantic codebook: toy")
    lines = md.splitlines()
    assert lines[0] == "# Semantic codebook: toy" and md.endswith("\n")
    assert f"- items: 400, embedding dim: {report['dim']}" in lines
    assert f"- recall@5 of codebook (FAISS ADC) neighbours vs exact flat neighbours: {report['recall@5']:.4f}" in lines
    rows = [ln for ln in lines if ln.startswith("| ") and ln[2].isdigit()]
    assert len(rows) == report["levels"] and rows[0].startswith(f"| 0 | 16 | {report['per_level'][0]['used']} |")


def test_the_build_log_lists_each_prefix_tried_and_extras_close_the_page():
    report = _report()
    tried = report["build_log"][1:]
    assert tried  # levels were added until the (zero) collision target or max_levels
    md = quality_markdown({**report, "dataset": "toy", "backbone": "hf", "encode_s": 1.5, "fused_image": False},
                          "t")
    assert "Build log: trained 3 levels in " in md
    for b in tried:
        assert f"- {b['levels']} levels: {100 * b['collision_rate']:.2f}% learned-code collisions" in md
    assert md.endswith("- dataset: toy\n- backbone: hf\n- encode_s: 1.5\n")  # only the named extras
    assert "Build log" not in quality_markdown({**report, "build_log": []}, "t")
