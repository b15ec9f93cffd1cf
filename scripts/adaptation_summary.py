"""One table over every adaptation report: NDCG@10 change of each method vs the static base.

python scripts/adaptation_summary.py [--reports DIR]   # after `persona evaluate --methods ...`

Reads ``adaptation-<model>.json`` (and ``-extra.json`` for the OOD AUROC) under ``DIR/<dataset>/`` and
``DIR/<variant>/<dataset>/`` for the ID-only variants in ``VARIANTS`` (DIR defaults to ``reports``) and writes
one row per (dataset, model, setting) to ``DIR/adaptation_summary.md``: the static
NDCG@10 (mean ± std over seeds) and, per method, the mean ± std over seeds of the per-seed relative
change. docs/adaptation_results.md links the result.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ["ml-100k", "ml-latest-small", "amazon-beauty", "amazon-scientific"]
MODELS = [("sasrec", "SASRec"), ("gru4rec", "GRU4Rec")]
VARIANTS = ["variants/id-only-base", "item_side/none"]  # ID-only device models: adapter with / without codes
METHODS = ["finetune", "duet", "edit", "proto", "proto-res", "proto-dyn", "served", "served-dyn", "no-xlayer",
           "no-codebook"]


def summary_rows(reports: Path) -> list[str]:
    head = ("| dataset | model | item view / adapter | static NDCG@10 | " + " | ".join(METHODS)
            + " | OOD AUROC frozen / dynamic |")
    rows = [head, "|---|---|---|---|" + "---|" * (len(METHODS) + 1)]
    for d, (model, label), root in itertools.product(DATASETS, MODELS, [reports, *(reports / v for v in VARIANTS)]):
        path = root / d / f"adaptation-{model}.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        runs, meta = report["runs"], report["meta"]
        view = meta.get("item_side", "none") + ("" if meta["adapter"].get("use_codebook", True) else ", no codes")
        extra_path = path.with_name(f"adaptation-{model}-extra.json")
        extra = json.loads(extra_path.read_text()) if extra_path.is_file() else {}
        static = np.array([r["ndcg@10"] for r in runs["static"]])
        cells = []
        for m in METHODS:
            if m in runs:
                rel = 100 * (np.array([r["ndcg@10"] for r in runs[m]]) / static - 1)
                cells.append(f"{rel.mean():+.1f}% ± {rel.std():.1f}")
            else:
                cells.append("—")
        ood = extra.get("ood_auroc", {})
        frozen = "proto" if "prototype distance" in ood else "proto-res"  # the bank's score; older reports
        auc = " / ".join(f"{np.mean(ood[m]):.3f}" if m in ood else "—" for m in (frozen, "proto-dyn"))
        rows.append(f"| {d} | {label} | {view} | {static.mean():.4f} ± {static.std():.4f} | " + " | ".join(cells)
                    + f" | {auc} |")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", default=str(ROOT / "reports"), help="the reports directory (reports_dir)")
    reports = Path(parser.parse_args().reports)
    rows = summary_rows(reports)
    text = [
        "# Adaptation: every dataset and model",
        "",
        "NDCG@10 change vs the static base, mean ± std over seeds of the per-seed relative change; OOD AUROC",
        "of the bank's OOD score, frozen / dynamic (`proto-dyn`) bank: the `recsys.ood` score (entropy +",
        "prototype miss rate) in reports that list a `prototype distance` beside it, else (older runs) the",
        "distance to the nearest prototype (frozen = `proto-res`). One row per",
        "`adaptation-<model>.json` under `reports/<dataset>/` (the defaults),",
        "`reports/variants/id-only-base/<dataset>/` and `reports/item_side/none/<dataset>/`; item view: `fused` =",
        "the LLM view beside the item IDs (the default), `none` = item IDs only; `no codes` = an adapter that",
        "reads no semantic codes (no LLM anywhere);",
        "the full tables are in those reports' `.md`.",
        "",
        *rows,
        "",
        "Command: `python scripts/adaptation_summary.py`.",
    ]
    out = reports / "adaptation_summary.md"
    out.write_text("\n".join(text) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
