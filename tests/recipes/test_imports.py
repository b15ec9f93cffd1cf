"""The import direction: cli → serving, recipes → llm_cloud, codebook → recsys (cli at the top: nothing imports
it; recipes never import serving)."""

from __future__ import annotations

from pathlib import Path

from tests.import_rules import imports_of

ROOT = Path(__file__).resolve().parents[2]
BELOW_CLI = ("serving", "recipes", "llm_cloud", "codebook", "recsys", "persona_device")


def _imported(package: str) -> dict[str, set[str]]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        out[str(path.relative_to(ROOT))] = imports_of(path)
    return out


def test_nothing_imports_the_cli():
    for package in BELOW_CLI:
        for path, names in _imported(package).items():
            assert "cli" not in names, f"{path} imports cli"


def test_the_cli_is_on_top():
    """The CLI imports the layers it drives (and nothing else of ours imports it: above)."""
    imported = set().union(*_imported("cli").values())
    assert {"serving", "recipes"} <= imported


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
