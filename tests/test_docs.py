"""The README stays short and starts with the two commands; every relative link in the docs resolves."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "reports" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def links(page: Path) -> list[str]:
    """Markdown link targets outside fenced code blocks and inline code."""
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


def test_readme_is_short_and_starts_with_make_run_and_make_test():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200
    body = [ln for ln in lines if ln.strip()]
    assert body[0].startswith("# ")
    assert body[1].startswith("```")
    first = body[2 : body.index("```", 2)]
    assert [ln.split("#")[0].strip() for ln in first] == ["make run", "make test"]


def test_readme_pastes_no_docs():
    text = README.read_text()
    assert "<!--" not in text
    assert not (ROOT / "scripts" / "fill_readme.py").exists()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(page: Path):
    for target in links(page):
        assert "../shared" not in target, f"{page.name}: {target} leaves the repository"
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s) and mail links, anchors
        if page == README:
            assert not target.startswith("../"), f"README: {target} leaves the repository"
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert path.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"


def test_no_page_points_outside_the_repository():
    for page in PAGES:
        assert "../shared" not in page.read_text(), page


def test_reports_index_lists_every_report():
    index = (ROOT / "reports" / "README.md").read_text()
    for path in sorted((ROOT / "reports").rglob("*")):
        if path.is_file() and path.name != "README.md":
            rel = path.relative_to(ROOT / "reports").as_posix()
            assert f"]({rel})" in index, f"reports/README.md does not list {rel}"


LIBRARY = ("recsys", "codebook", "llm_cloud", "serving", "recipes", "cli", "persona_device")


def imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports (``from a.b import c`` counts ``a.b`` and ``a.b.c``), at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def mirror_modules(path: Path) -> list[Path]:
    """The test modules of library module ``pkg/.../name.py``: ``tests/pkg/.../test_name.py``, or, where that basename
    is taken (basenames are unique across tests/), ``test_<pkg>_<name>.py`` or ``test_<name>_<pkg>.py`` in
    tests/pkg/."""
    rel = path.relative_to(ROOT)
    pkg, name = rel.parts[0], path.stem
    under = ROOT / "tests" / pkg
    return [p for p in [ROOT / "tests" / rel.parent / f"test_{name}.py", *sorted(under.rglob(f"test_{pkg}_{name}.py")),
                        *sorted(under.rglob(f"test_{name}_{pkg}.py"))] if p.is_file()]


def layout_reasons(layout: str) -> set[str]:
    """The modules docs/layout.md's "Tests" section lists as having no test module of their own: the names before the
    dash of each ``- `a.b` — why`` line, or a package's modules at once, ``- `pkg.*` (`a`, `b`) — why``."""
    section = layout.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    reasons = set()
    for line in section.splitlines():
        if m := re.match(r"- `([a-z_.]+)\.\*` \(([^)]*)\)", line):
            reasons |= {f"{m.group(1)}.{name}" for name in re.findall(r"`([a-z_]+)`", m.group(2))}
        elif line.startswith("- "):
            reasons |= set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", line.split(" — ", 1)[0]))
    return reasons


def library_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p
            for pkg in LIBRARY for p in sorted((ROOT / pkg).rglob("*.py")) if p.name != "__init__.py"}


def unmirrored(layout: str) -> tuple[list[str], list[str]]:
    """``(missing, stale)``: library modules with neither a test module that imports them nor a reason in ``layout``,
    and reasons that name no library module or one that has its test module."""
    modules, reasons = library_modules(), layout_reasons(layout)
    mirrored = {m for m, path in modules.items() if any(m in imported_modules(t) for t in mirror_modules(path))}
    missing = sorted(m for m in modules if m not in mirrored and m not in reasons)
    stale = sorted(r for r in reasons if r not in modules or r in mirrored)
    return missing, stale


def test_every_library_module_has_its_test_module_or_a_reason():
    """One test module per library module (:func:`mirror_modules`), importing it; else docs/layout.md says why not."""
    missing, stale = unmirrored((ROOT / "docs" / "layout.md").read_text())
    assert not missing, f"no test module (tests/<pkg>/.../test_<name>.py) and no reason in layout.md: {missing}"
    assert not stale, f"docs/layout.md gives a reason for modules that are gone or have their test module: {stale}"


def test_test_module_basenames_are_unique():
    """pytest imports test modules by basename (rootdir, no packages): two of one name cannot both run."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert not {n for n in names if names.count(n) > 1}


def test_make_bench_runs_every_benchmark_or_says_why_not():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    named = set(run_all.SCRIPTS) | set(run_all.SKIPPED)
    assert scripts == named, scripts ^ named
    assert not set(run_all.SCRIPTS) & set(run_all.SKIPPED)


def test_library_functions_and_classes_are_short_or_say_why():
    """Issue 32's bar: no library function longer than 60 lines, no class with more than 12 methods, unless its
    docstring says why ("more than 60 lines" / "more than 12 methods")."""
    import ast

    over = []
    for pkg in ("recsys", "codebook", "llm_cloud", "serving", "recipes", "cli", "persona_device"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                doc = ast.get_docstring(node) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.ClassDef)) else None  # fmt: skip
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if node.end_lineno - node.lineno + 1 > 60 and "more than 60 lines" not in (doc or "").lower():
                        over.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
                elif isinstance(node, ast.ClassDef):
                    methods = [b for b in node.body if isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef))]
                    if len(methods) > 12 and "more than 12 methods" not in " ".join((doc or "").lower().split()):
                        over.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({len(methods)} methods)")
    assert not over, over
