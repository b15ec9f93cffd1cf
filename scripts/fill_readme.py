"""Paste the committed reports and docs/*.md sections into README.md between their markers.

python scripts/fill_readme.py      # after `scripts/reproduce.sh`, `persona codebook`, benchmarks
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ["ml-100k", "ml-latest-small", "amazon-beauty", "amazon-scientific"]
MODELS = [("sasrec", "SASRec"), ("gru4rec", "GRU4Rec")]


def table_of(md: Path) -> str:
    """The first Markdown table in ``md`` (empty if the report is missing)."""
    if not md.is_file():
        return ""
    lines = md.read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("|")), None)
    if start is None:
        return ""
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def notes_of(md: Path) -> str:
    """The bullet lines right after the first table (relative gains, OOD AUROC)."""
    if not md.is_file():
        return ""
    text = md.read_text().split("\n\n")
    return "\n".join(ln for block in text[2:3] for ln in block.splitlines() if ln.startswith("- "))


def adaptation_summary() -> str:
    """One row per (dataset, model): static NDCG@10 and each method's mean relative change, OOD AUROC."""
    import json

    import numpy as np

    cols = ["finetune", "duet", "edit", "proto", "proto-res", "proto-dyn", "served", "no-xlayer", "no-codebook"]
    head = "| dataset | model | static NDCG@10 | " + " | ".join(cols) + " | OOD AUROC frozen / dynamic |"
    rows = [head, "|---|---|---|" + "---|" * (len(cols) + 1)]
    for d in DATASETS:
        for model, label in MODELS:
            path = ROOT / "reports" / d / f"adaptation-{model}.json"
            if not path.is_file():
                continue
            runs = json.loads(path.read_text())["runs"]
            extra = json.loads(path.with_name(f"adaptation-{model}-extra.json").read_text())
            static = np.array([r["ndcg@10"] for r in runs["static"]])
            cells = []
            for m in cols:
                if m in runs:
                    rel = 100 * (np.array([r["ndcg@10"] for r in runs[m]]) / static - 1)
                    cells.append(f"{rel.mean():+.1f}% ± {rel.std():.1f}")
                else:
                    cells.append("—")
            ood = extra.get("ood_auroc", {})
            auc = " / ".join(f"{np.mean(ood[m]):.3f}" if m in ood else "—" for m in ("proto-res", "proto-dyn"))
            rows.append(f"| {d} | {label} | {static.mean():.4f} ± {static.std():.4f} | " + " | ".join(cells)
                        + f" | {auc} |")  # fmt: skip
    return "\n".join(rows) if len(rows) > 2 else ""


def section(name: str, body: str, readme: str) -> str:
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    pattern = (
        re.compile(re.escape(start) + r".*?" + re.escape(end), re.S) if end in readme else re.compile(re.escape(start))
    )
    return pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", readme, count=1)


def main() -> None:
    readme = (ROOT / "README.md").read_text()
    base = [(ROOT / "docs" / "base_results.md").read_text().strip()]
    for d in DATASETS:
        t = table_of(ROOT / "reports" / d / "base.md")
        base.append(f"**{d}**\n\n{t if t else '_not measured in this revision_'}")
    readme = section("BASE-TABLES", "\n\n".join(base), readme)
    adapt = [
        (ROOT / "docs" / "adaptation.md").read_text().strip(),
        (ROOT / "docs" / "adaptation_results.md").read_text().strip(),
    ]
    summary = adaptation_summary()
    if summary:
        adapt.append(
            "**All datasets and models** — NDCG@10 change vs the static base, mean ± std over 3 seeds "
            "(relative, per seed); full tables below.\n\n" + summary
        )
    for d in DATASETS:
        for model, label in MODELS:
            md = ROOT / "reports" / d / f"adaptation-{model}.md"
            if md.is_file():
                adapt.append(f"**{d} / {label}**\n\n{table_of(md)}\n\n{notes_of(md)}")
                png = md.with_name(f"adaptation-{model}-ndcg-over-time.png")
                if png.is_file():
                    adapt.append(f"![NDCG@10 over the test period, {d} {label}]({png.relative_to(ROOT)})")
    for extra in sorted((ROOT / "reports").glob("ablations/*/adaptation-sasrec.md")) + sorted(
        (ROOT / "reports").glob("variants/*/*/adaptation-sasrec.md")
    ):
        rel = extra.relative_to(ROOT)
        adapt.append(f"**{rel.parent}** (`{rel}`)\n\n{table_of(extra)}\n\n{notes_of(extra)}")
    cost = table_of(ROOT / "reports" / "benchmarks" / "adaptation_cost.md")
    if cost:
        cost_md = (ROOT / "reports" / "benchmarks" / "adaptation_cost.md").read_text().split("\n\n")
        adapt.append(
            "**Cost per adaptation on the device** (`python benchmarks/adaptation_cost.py`)\n\n"
            + "\n\n".join(cost_md[1:])
        )
    readme = section("ADAPTATION", "\n\n".join(adapt), readme)
    cloud = table_of(ROOT / "reports" / "benchmarks" / "serve_load_cloud.md") or "_not measured in this revision_"
    for name, doc in (("CODEBOOK", "codebook.md"), ("SERVING", "serving.md"), ("DISTRIBUTED", "distributed.md")):
        text = section("CLOUD-LOAD", cloud, (ROOT / "docs" / doc).read_text())
        text = re.sub(r"<!-- /?CLOUD-LOAD -->\n", "", text)  # README keeps only its own markers
        readme = section(name, text, readme)
    (ROOT / "README.md").write_text(readme)


if __name__ == "__main__":
    main()
