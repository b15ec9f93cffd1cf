"""Adaptation results across seeds (``recipes.adaptation.evaluate_methods``): time windows, OOD AUROC, reports."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from llm_cloud.artifacts import ArtifactError
from llm_cloud.methods import METHODS, RowRecord
from recsys import metrics, run_layout
from recsys.atomic_io import atomic_write_text
from recsys.metrics import auroc
from recsys.report import markdown_table, slice_table, write_report

log = logging.getLogger(__name__)
TABLE_KEYS = ["ndcg@10", "hit@10", "mrr@10", "auc", "uauc"]
N_TIME_WINDOWS = 8


def time_windows(rows) -> tuple[np.ndarray, list[float]]:
    """Each test row's time window and the windows' edges.

    Test rows are in time order (shift protocol) or user order (order protocol): equal-count windows.
    """
    window_of = np.arange(len(rows)) * N_TIME_WINDOWS // len(rows)
    times = rows["timestamp"].numpy()
    edges = [float(times[window_of == w].min()) for w in range(N_TIME_WINDOWS)] + [float(times.max())]
    return window_of, edges


def ndcg_over_time(record: RowRecord, window_of: np.ndarray) -> list[float]:
    nd = metrics.ndcg(torch.as_tensor(record.cat("rank"))).numpy()
    return [float(nd[window_of == w].mean()) for w in range(N_TIME_WINDOWS)]


OOD_METHODS = ("proto", "proto-res", "proto-centre", "proto-dyn", "served", "served-dyn")  # they record scores


def ood_aurocs(records: dict[str, RowRecord]) -> dict[str, float]:
    """One seed's OOD AUROCs at flagging the rows the static model misses at 10: the bank's score
    (:mod:`recsys.ood`) as a frozen bank (``proto``, ``served``) and a dynamic one (``proto-dyn``,
    ``served-dyn``) computes it, beside the base model's entropy alone and the code-space distance to the
    nearest prototype of a frozen bank."""
    out: dict[str, float] = {}
    if "static" not in records:
        return out
    missed = (records["static"].cat("rank") >= 10).astype(int)
    for method in ("proto", "proto-dyn", "served", "served-dyn"):
        if method in records:
            out[method] = auroc(records[method].cat("ood_score"), missed)
    for method in (m for m in OOD_METHODS if not m.endswith("-dyn")):  # a dynamic bank's distances move
        if method in records:
            out["base entropy"] = auroc(records[method].cat("base_entropy"), missed)
            out["prototype distance"] = auroc(records[method].cat("proto_distance"), missed)
            break
    return out


def merge_with_report(cfg, out: dict) -> dict:
    """``out`` laid over the existing ``reports/<dataset>/adaptation-<model>`` results (same seeds): the
    methods just evaluated replace theirs, the others are kept; methods stay in ``METHODS`` order."""
    directory = run_layout.base_report_dir(cfg.reports_dir, cfg.dataset)
    stem = f"adaptation-{cfg.model}"
    try:
        old = json.loads((directory / f"{stem}.json").read_text())
        extra = json.loads((directory / f"{stem}-extra.json").read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"no earlier report to update in {directory} ({exc})") from exc
    if old["meta"]["seeds"] != list(cfg.seeds):
        raise ArtifactError(f"the report in {directory} has seeds {old['meta']['seeds']}, this run {list(cfg.seeds)}")
    if old["meta"].get("item_side") != cfg.model_params.item_side:
        raise ArtifactError(f"the report in {directory} is for item_side={old['meta'].get('item_side')}, "
                            f"this run {cfg.model_params.item_side}")
    merged = {
        "results": {**old["runs"], **out["results"]},
        "over_time": {**extra["over_time"], **out["over_time"]},
        "ood_auroc": {**extra["ood_auroc"], **out["ood_auroc"]},
        "window_edges": out["window_edges"],
    }
    merged["results"] = {m: merged["results"][m] for m in METHODS if m in merged["results"]}
    merged["timings"] = [
        {**a, **{f"update:{k}": v for k, v in b.items()}} for a, b in zip(extra["timings"], out["timings"])
    ]
    return merged


def plot_over_time(out: dict, path: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(1, N_TIME_WINDOWS + 1)
    for method in ("static", "proto", "proto-res", "proto-dyn", "served", "served-dyn", "cached", "edit", "finetune"):
        if method in out["over_time"]:
            arr = np.array(out["over_time"][method])
            ax.errorbar(x, arr.mean(0), yerr=arr.std(0), label=method, marker="o", capsize=3)
    ax.set_xlabel("test-period time window (equal-count, in time order)")
    ax.set_ylabel("NDCG@10")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_adaptation(cfg, out: dict) -> str:
    """Write ``reports/<dataset>/adaptation-<model>.{json,md,png}``; return the Markdown table."""
    directory = run_layout.base_report_dir(cfg.reports_dir, cfg.dataset)
    stem = f"adaptation-{cfg.model}"
    meta = {
        "dataset": cfg.dataset,
        "model": cfg.model,
        "protocol": cfg.data.protocol,
        "seeds": list(cfg.seeds),
        "item_side": cfg.model_params.item_side,  # the device models' item view (docs/item_side.md)
        "adapter": cfg.adapter.model_dump(),
        "prototypes": cfg.prototypes.model_dump(),
        "device": cfg.torch_device(),
    }
    atomic_write_text(
        directory / f"{stem}-extra.json",
        json.dumps({k: out[k] for k in ("over_time", "ood_auroc", "timings", "window_edges")}, indent=1) + "\n",
    )
    plot_over_time(
        out, directory / f"{stem}-ndcg-over-time.png", f"{cfg.dataset} {cfg.model}: NDCG@10 over the test period"
    )
    table = markdown_table(out["results"], TABLE_KEYS)
    static = out["results"].get("static")
    lines = [table, ""]
    if static:
        base = np.mean([r["ndcg@10"] for r in static])
        for m, runs in out["results"].items():
            rel = np.array([r["ndcg@10"] for r in runs]) / np.array([r["ndcg@10"] for r in static]) - 1
            lines.append(
                f"- {m}: NDCG@10 {100 * (np.mean([r['ndcg@10'] for r in runs]) / base - 1):+.1f}% vs static "
                f"(per seed {', '.join(f'{100 * v:+.1f}%' for v in rel)})"
            )
    for m, vals in out["ood_auroc"].items():
        lines.append(f"- OOD AUROC ({m}): {np.mean(vals):.3f} ± {np.std(vals):.3f}")
    slices = slice_table(out["results"])
    md = "\n".join(lines) + (f"\n\n{slices}" if slices else "")
    notes = "\n".join(lines[2:])
    write_report(directory, stem, f"Adaptation on {cfg.dataset} ({cfg.model})", out["results"], meta, TABLE_KEYS, notes)
    return md
