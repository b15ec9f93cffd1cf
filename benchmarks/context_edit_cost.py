"""Cloud cost per edit with and without the user-context codebook hits, in one run.

Builds the cloud's :class:`llm_cloud.editor.AdapterEditor` twice on the same base checkpoint and the
same prototype bank settings — an adapter without user context and one with it (``use_context``;
trained ones from ``adapter-main`` / ``adapter-context`` when present, else freshly initialised: the
cost does not depend on the weights) — and times ``editor.edit(history)`` per real test history, one
thread, batch 1. Also timed: the context hits alone (:class:`llm_cloud.context_hits.UserContextHits`,
cached item embeddings → mean → FAISS), and the alternative of re-encoding the user-context text with
the configured backbone per edit (``--no-backbone`` skips it). Writes
``reports/benchmarks/context_edit_cost.{json,md}``.

    python benchmarks/context_edit_cost.py [--runs runs] [--dataset ml-100k] [--model sasrec] [--rows 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llm_cloud.adapter import Adapter, left_padded_windows
from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
from llm_cloud.adapter_data import training_samples
from llm_cloud.artifacts import code_table_for, load_adapter, user_context_for
from llm_cloud.editor import AdapterEditor
from llm_cloud.prototype_build import build_bank
from recsys import run_layout
from recsys.atomic_io import atomic_write_text
from recsys.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _adapter(run_dir: Path, name: str, cfg: AdapterConfig, base, code_sizes, context) -> tuple[Adapter, str]:
    if name in run_layout.read_manifest(run_dir).adapters:
        adapter, _ = load_adapter(run_layout.adapter_dir(run_dir, name))
        if adapter.cfg.use_context == cfg.use_context:
            return adapter, f"trained (adapter-{name})"
    sizes = context.level_sizes if cfg.use_context else None
    return Adapter(cfg, base.n_items, base.head.dim, len(base.head.layers), code_sizes, None, sizes).eval(), "fresh"


def _times_ms(fns: dict, items: list) -> dict[str, np.ndarray]:
    """Per-call ms of each function, interleaved per item so machine load hits every path alike."""
    for x in items[:10]:  # warm-up
        for fn in fns.values():
            fn(x)
    out = {k: [] for k in fns}
    for x in items:
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            out[k].append((time.perf_counter() - t0) * 1e3)
    return {k: np.array(v) for k, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="output_dir of `persona train` / `codebook`")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--no-backbone", action="store_true", help="skip timing the backbone re-encoding path")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from recsys.experiment import load_dataset_split
    from serving.config import load_app_config

    cfg = load_app_config(overrides=[f"dataset={args.dataset}", f"model={args.model}", f"output_dir={args.runs}"])
    run_dir, cb_dir = cfg.run_dir(0), run_layout.codebook_dir(args.runs, args.dataset)
    if not (run_dir / "model.pt").is_file() or not (cb_dir / "meta.json").is_file():
        print(f"need {run_dir} and {cb_dir}: run `persona train` and `persona codebook` (output_dir={args.runs})")
        return 2
    split = load_dataset_split(cfg)
    base, _, _ = load_checkpoint(run_dir)
    base.eval()
    table = code_table_for(cb_dir, split.item_tokens)
    code_sizes = [int(table[:, i].max()) for i in range(table.size(1))]
    context = user_context_for(cb_dir, split.item_tokens, cfg.adapter.context_items)
    samples = training_samples(base, split.train_sequences, cfg.adapter.window, 1).subset(3000, 0)
    rows = split.eval_rows("test")
    step = max(len(rows) // args.rows, 1)
    histories = [rows["item_id_list"][i, : int(rows["item_length"][i])].tolist() for i in range(0, len(rows), step)]
    histories = histories[: args.rows]

    editors, sources = {}, {}
    for name, use in (("main", False), ("context", True)):
        acfg = cfg.adapter.model_copy(update={"use_context": use, "semantic_main": False})
        adapter, sources[name] = _adapter(run_dir, name, acfg, base, code_sizes, context)
        ctx = context if use else None
        with torch.enable_grad():
            bank = build_bank(PrototypeConfig(k=8, variant="centre"), base, adapter, samples, table, 0, ctx)
        editors[name] = AdapterEditor(base, adapter, bank, table, f"bench-{name}", ctx)
    def hits_only(h):
        seq = torch.tensor([h[-base.max_seq_len :]])
        return context(left_padded_windows(seq, torch.tensor([seq.size(1)]), cfg.adapter.window))

    fns = {
        "edit without user context": lambda h: editors["main"].edit(h, "fp32"),
        "edit with user context": lambda h: editors["context"].edit(h, "fp32"),
        "  of which: context hits (cached item embeddings → FAISS)": hits_only,
    }
    times = _times_ms(fns, histories)
    if not args.no_backbone:
        from llm_cloud.backbones import build_backbone
        from llm_cloud.context_text import item_texts, user_context
        from recsys.datasets import prepare
        from recsys.datasets.atomic import read_items

        items = read_items(prepare(args.dataset, cfg.data), args.dataset)
        texts = dict(zip(items["item_id"].astype(str), item_texts(items, cfg.data.text_template, cfg.context)))
        backbone = build_backbone(cfg.backbone, cached=False)
        tok = split.item_tokens

        def reencode(h):
            recent = [texts[str(tok[i])] for i in h[-cfg.context.user_max_items :] if str(tok[i]) in texts]
            return backbone.encode([user_context(recent, cfg.context)])

        name = f"alternative: re-encode the context text ({cfg.backbone.name}) per edit"
        times.update(_times_ms({name: reencode}, histories[: min(len(histories), 100)]))
    results = {k: {"median_ms": float(np.median(v)), "mean_ms": float(v.mean()), "p95_ms": float(np.percentile(v, 95)),
                   "n": len(v)} for k, v in times.items()}  # fmt: skip
    plain, ctx = results["edit without user context"], results["edit with user context"]
    meta = {
        "dataset": args.dataset, "model": args.model, "rows": len(histories), "adapters": sources,
        "context_items": cfg.adapter.context_items, "codebook_levels": context.level_sizes,
        "added_median_ms": ctx["median_ms"] - plain["median_ms"], "torch": torch.__version__,
        "machine": f"{os.cpu_count()} CPU cores, 1 torch thread",
        "command": "python " + " ".join(["benchmarks/context_edit_cost.py", *sys.argv[1:]]),
    }  # fmt: skip
    lines = [
        f"# Cloud cost per edit with and without user context ({args.dataset}, {args.model} seed 0, "
        f"{len(histories)} test histories, batch 1)",
        "",
        "| path | median ms | mean ms | p95 ms | n |",
        "|---|---|---|---|---|",
        *[f"| {k} | {v['median_ms']:.3f} | {v['mean_ms']:.3f} | {v['p95_ms']:.3f} | {v['n']} |"
          for k, v in results.items()],
        "",
        f"Added by the user context: {meta['added_median_ms']:+.3f} ms per edit (median). Adapters: {sources}.",
        f"Command: `{meta['command']}`",
    ]
    md = "\n".join(lines) + "\n"
    print(md)
    out = Path(args.out)
    atomic_write_text(out / "context_edit_cost.json", json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    atomic_write_text(out / "context_edit_cost.md", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
