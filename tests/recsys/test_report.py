"""recsys.report: metric labels, mean ± std tables (overall and per target slice), the JSON + Markdown report."""

from __future__ import annotations

import json

import pytest

from recsys.report import label, markdown_table, plot_curves, slice_table, write_report

RUNS = {
    "popularity": [{"ndcg@10": 0.02, "hit@10": 0.05}] * 2,
    "sasrec": [{"ndcg@10": 0.05, "hit@10": 0.10, "new/rows": 30.0, "new/ndcg@10": 0.01, "new/hit@10": 0.02,
                "tail/rows": 70.0, "tail/ndcg@10": 0.03, "tail/hit@10": 0.06},
               {"ndcg@10": 0.07, "hit@10": 0.12, "new/rows": 30.0, "new/ndcg@10": 0.03, "new/hit@10": 0.04,
                "tail/rows": 70.0, "tail/ndcg@10": 0.05, "tail/hit@10": 0.08}],
}
KEYS = ["ndcg@10", "hit@10"]


@pytest.mark.parametrize(("key", "text"), [("ndcg@10", "NDCG@10"), ("hit@5", "HR@5"), ("mrr@20", "MRR@20"),
                                           ("uauc", "UAUC")])
def test_labels(key, text):
    assert label(key) == text


def test_markdown_table_is_mean_and_std_per_method():
    table = markdown_table(RUNS, KEYS).splitlines()
    assert table[0] == "| method | seeds | NDCG@10 | HR@10 |"
    assert table[2] == "| popularity | 2 | 0.0200 ± 0.0000 | 0.0500 ± 0.0000 |"
    assert table[3] == "| sasrec | 2 | 0.0600 ± 0.0100 | 0.1100 ± 0.0100 |"


def test_slice_table_shows_the_slices_the_runs_carry_and_a_dash_where_a_method_has_none():
    rows = slice_table(RUNS).splitlines()
    assert rows[0] == "| method | new NDCG@10 | new HR@10 | tail NDCG@10 | tail HR@10 |"
    assert rows[2] == "| popularity | – | – | – | – |"
    assert rows[3] == "| sasrec | 0.0200 ± 0.0100 | 0.0300 ± 0.0100 | 0.0400 ± 0.0100 | 0.0700 ± 0.0100 |"
    assert slice_table({"popularity": RUNS["popularity"]}) == ""


def test_the_slice_counts_come_from_the_first_method_that_has_them():
    note = slice_table({"sasrec": RUNS["sasrec"]}).splitlines()[-1]
    assert note.startswith("Test targets per slice: new 30, tail 70 (")


def test_write_report_writes_runs_summary_and_markdown(tmp_path):
    json_path, md_path = write_report(tmp_path / "out", "base", "Base models", RUNS, {"dataset": "toy"}, KEYS,
                                      notes="A note.")
    data = json.loads(json_path.read_text())
    assert data["runs"] == RUNS and data["meta"] == {"dataset": "toy"}
    assert data["summary"]["sasrec"]["ndcg@10"] == {"mean": pytest.approx(0.06), "std": pytest.approx(0.01)}
    md = md_path.read_text()
    assert md.startswith("# Base models\n\n| method | seeds |")
    assert "## New and long-tail items" in md and "A note." in md and md.endswith("- dataset: toy\n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["base.json", "base.md"]  # no temp files left


def test_write_report_without_slices_has_no_slice_section(tmp_path):
    _, md_path = write_report(tmp_path, "pop", "Popularity", {"popularity": RUNS["popularity"]}, {}, KEYS)
    assert "long-tail" not in md_path.read_text()


def test_plot_curves_writes_a_png(tmp_path):
    path = tmp_path / "curve.png"
    plot_curves({"adapter": ([1, 2, 4], [0.05, 0.06, 0.065])}, {"base": (0.05, "--")}, path, "t", "x", "y")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
