"""Result tables: mean ± std over seeds, printed and written as JSON + Markdown (atomically)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recsys.atomic_io import atomic_write_text
from recsys.evaluate import REPORT_KEYS, SLICE_KEYS, SLICES, summarize

LABELS = {"ndcg": "NDCG", "hit": "HR", "mrr": "MRR"}


def label(key: str) -> str:
    """``ndcg@10`` → ``NDCG@10``, ``hit@5`` → ``HR@5``, ``uauc`` → ``UAUC``."""
    name, _, k = key.partition("@")
    return f"{LABELS.get(name, name.upper())}@{k}" if k else name.upper()


def markdown_table(results: dict[str, list[dict[str, float]]], keys: list[str] = REPORT_KEYS) -> str:
    """``results`` maps a method to its per-seed metric dicts."""
    head = "| method | seeds | " + " | ".join(label(k) for k in keys) + " |"
    sep = "|---|---|" + "---|" * len(keys)
    rows = [head, sep]
    for method, runs in results.items():
        stats = summarize(runs, keys)
        cells = " | ".join(f"{m:.4f} ± {s:.4f}" for m, s in (stats[k] for k in keys))
        rows.append(f"| {method} | {len(runs)} | {cells} |")
    return "\n".join(rows)


def slice_table(results: dict[str, list[dict[str, float]]]) -> str:
    """Metrics on the slices of test targets (new / seen / long-tail items, :func:`recsys.evaluate.target_slices`),
    mean ± std over seeds; empty when the runs carry no slice metrics."""
    present = [s for s in SLICES if any(f"{s}/rows" in r for runs in results.values() for r in runs)]
    if not present:
        return ""
    cols = [(s, k) for s in present for k in SLICE_KEYS]
    rows = ["| method | " + " | ".join(f"{s} {label(k)}" for s, k in cols) + " |", "|---|" + "---|" * len(cols)]
    for method, runs in results.items():
        cells = []
        for s, k in cols:
            vals = [r[f"{s}/{k}"] for r in runs if f"{s}/{k}" in r]
            cells.append(f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if vals else "–")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    first = next(iter(results.values()))[0]
    counts = ", ".join(f"{s} {int(first[f'{s}/rows']):,}" for s in present if f"{s}/rows" in first)
    note = "long tail = seen items outside the top 20 % by training popularity"
    return "\n".join(rows) + f"\n\nTest targets per slice: {counts} ({note})."


def write_report(
    directory: Path,
    stem: str,
    title: str,
    results: dict[str, list[dict[str, float]]],
    meta: dict,
    keys: list[str] = REPORT_KEYS,
    notes: str = "",
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (every seed's metrics + summary) and ``<stem>.md``; returns both paths."""
    directory = Path(directory)
    payload = {
        "meta": meta,
        "runs": results,
        "summary": {
            m: {k: {"mean": a, "std": b} for k, (a, b) in summarize(r, keys).items()} for m, r in results.items()
        },
    }
    json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    lines = [f"# {title}", "", markdown_table(results, keys), ""]
    slices = slice_table(results)
    if slices:
        lines += ["## New and long-tail items", "", slices, ""]
    if notes:
        lines += [notes, ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return json_path, md_path


def plot_curves(curves: dict[str, tuple[list[float], list[float]]], lines: dict[str, tuple[float, str]], path: Path,
                title: str, xlabel: str, ylabel: str) -> None:
    """One line with markers per ``curves`` entry (``label: (xs, ys)``) and a grey horizontal line per ``lines``
    entry (``label: (y, linestyle)``), written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", label=name)
    for name, (y, style) in lines.items():
        ax.axhline(y, linestyle=style, color="grey", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
