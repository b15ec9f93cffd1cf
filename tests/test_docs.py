"""The README stays short and starts with the two commands; every relative link in the docs resolves."""

from __future__ import annotations

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


def test_every_library_module_has_a_test_or_a_reason():
    """A library module is imported by some test module, or docs/layout.md says why it has none."""
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    layout = (ROOT / "docs" / "layout.md").read_text()
    reasons = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", layout))
    for line in layout.splitlines():  # a package's modules at once: - `pkg.*` (`a`, `b`, ...)
        if m := re.match(r"- `([a-z_.]+)\.\*` \(([^)]*)\)", line):
            reasons |= {f"{m.group(1)}.{name}" for name in re.findall(r"`([a-z_]+)`", m.group(2))}
    missing = []
    for pkg in ("recsys", "codebook", "llm_cloud", "serving", "recipes", "cli", "persona_device"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            parent, leaf = module.rsplit(".", 1)
            used = re.search(rf"\b{re.escape(module)}\b", tests) or re.search(
                rf"from {re.escape(parent)} import [^\n]*\b{leaf}\b", tests)
            if not used and module not in reasons:
                missing.append(module)
    assert not missing, f"no test imports these and docs/layout.md gives no reason: {missing}"


def test_make_bench_runs_every_benchmark_or_says_why_not():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    named = set(run_all.SCRIPTS) | set(run_all.SKIPPED)
    assert scripts == named, scripts ^ named
    assert not set(run_all.SCRIPTS) & set(run_all.SKIPPED)
