"""The import direction: serving → recipes → llm_cloud, codebook → recsys (recipes never import serving)."""

from __future__ import annotations

from pathlib import Path

from tests.import_rules import imports_of

ROOT = Path(__file__).resolve().parents[2]


def _imported(package: str) -> dict[str, set[str]]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        out[str(path.relative_to(ROOT))] = imports_of(path)
    return out


def test_recipes_import_nothing_of_serving():
    for path, names in _imported("recipes").items():
        assert "serving" not in names, f"{path} imports serving"


def test_the_layers_below_import_no_recipes():
    for package in ("recsys", "codebook", "llm_cloud"):
        for path, names in _imported(package).items():
            assert not names & {"recipes", "serving"}, f"{path} imports {names & {'recipes', 'serving'}}"


def test_run_layout_imports_nothing_above_recsys():
    assert _imported("recsys")["recsys/run_layout.py"] <= {"__future__", "hashlib", "json", "dataclasses",
                                                          "datetime", "pathlib", "recsys"}
