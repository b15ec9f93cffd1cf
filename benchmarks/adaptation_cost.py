"""Per-adaptation cost on the device: Persona (edit / prototype) vs on-device fine-tuning, one run.

Measures, at batch 1 and one thread (a device serving its own user): wall time (median of repeats),
FLOPs (``torch.utils.flop_counter``) and peak memory allocated by torch during the step (profiler
memory events), for
  base          score the catalogue with the base head
  persona-edit  apply a received full ΔW (clip) + score
  persona-lowrank  apply a received rank-r ΔW = U V + score
  proto-cached  pick the prototype on device (nearest signature) + apply its cached edit + score
  proto-residual  decode a received residual code with the cached projections + prototype edit + score
  finetune      fine-tune a head copy on the window (5 Adam steps) + score
and the bytes each adaptation moves (uplink: window as item ids vs semantic codes; downlink: full ΔW,
low-rank ΔW, prototype id + residual code). Prints a table with ratios against fine-tuning and writes
``reports/benchmarks/adaptation_cost.{json,md}``.

    python benchmarks/adaptation_cost.py [--checkpoint runs/ml-100k/sasrec/seed0] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from recsys.checkpoint import load_checkpoint
from recsys.config import ModelConfig
from recsys.finetune import finetune_edit
from recsys.models import EditableSeqRec, HeadEdit

ROOT = Path(__file__).resolve().parents[1]


def peak_memory_bytes(fn) -> int:
    """Peak of torch's CPU allocations (bytes) while ``fn`` runs, from profiler memory events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)), key=lambda e: e.time_range.start)
    level = peak = 0
    for e in events:
        level += e.cpu_memory_usage
        peak = max(peak, level)
    return int(peak)


def flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def wall_us(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "runs/ml-100k/sasrec/seed0"))
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--prototypes", type=int, default=8)
    ap.add_argument("--code-dim", type=int, default=64)
    ap.add_argument("--levels", type=int, default=3, help="semantic-ID levels (8-bit codes)")
    ap.add_argument("--out", default=str(ROOT / "reports/benchmarks"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if Path(args.checkpoint, "model.yaml").is_file():
        model, _, _ = load_checkpoint(Path(args.checkpoint))
        source = args.checkpoint
    else:  # same shapes as the ml-100k device model, random weights
        model = EditableSeqRec("sasrec", ModelConfig(item_side="none"), 1683, 50)
        source = "random sasrec (no checkpoint found)"
    model.eval()
    d, n_layers, n_items = model.head.dim, len(model.head.layers), model.n_items
    seq = torch.zeros(1, model.max_seq_len, dtype=torch.long)
    seq[0, :40] = torch.randint(1, n_items, (40,))
    length = torch.tensor([40])
    full = HeadEdit(
        [torch.randn(d, d) * 0.05 for _ in range(n_layers)], [torch.randn(d) * 0.05 for _ in range(n_layers)], 0.1
    )
    u = [torch.randn(d, args.rank) * 0.1 for _ in range(n_layers)]
    v = [torch.randn(args.rank, d) * 0.1 for _ in range(n_layers)]
    signatures = torch.randn(args.prototypes, d)
    proto_edits = [
        HeadEdit([w.clone() for w in full.dW], [b.clone() for b in full.db], 1.0) for _ in range(args.prototypes)
    ]
    proj_w = [torch.randn(d * d, args.code_dim) * 0.01 for _ in range(n_layers)]  # cached adapter projections
    proj_b = [torch.randn(d, args.code_dim) * 0.01 for _ in range(n_layers)]
    residual_code = torch.randn(n_layers, args.code_dim)

    def top10(edit=None):
        state = model.user_state(seq, length)
        return torch.topk(model.logits(model.head(state, edit)), 10)

    def base():
        with torch.inference_mode():
            top10()

    def persona_edit():
        with torch.inference_mode():
            top10(full)

    def persona_lowrank():
        with torch.inference_mode():
            top10(HeadEdit([a @ b for a, b in zip(u, v)], full.db, 0.1))

    def proto_cached():
        with torch.inference_mode():
            state = model.user_state(seq, length)
            k = int(torch.cdist(state, signatures).argmin())
            torch.topk(model.logits(model.head(state, proto_edits[k])), 10)

    def proto_residual():
        with torch.inference_mode():
            state = model.user_state(seq, length)
            k = int(torch.cdist(state, signatures).argmin())
            res_w = [(p @ residual_code[i]).view(d, d).clamp(-0.5, 0.5) for i, p in enumerate(proj_w)]
            res_b = [(p @ residual_code[i]).clamp(-0.5, 0.5) for i, p in enumerate(proj_b)]
            edit = HeadEdit(
                [w + r for w, r in zip(proto_edits[k].dW, res_w)],
                [b + r for b, r in zip(proto_edits[k].db, res_b)],
                1.0,
            )
            torch.topk(model.logits(model.head(state, edit)), 10)

    def finetune():
        edit = finetune_edit(model, seq, length, args.window, steps=5)
        with torch.inference_mode():
            top10(edit)

    methods = {
        "base": base,
        "persona-edit": persona_edit,
        "persona-lowrank": persona_lowrank,
        "proto-cached": proto_cached,
        "proto-residual": proto_residual,
        "finetune": finetune,
    }
    rows = {}
    for name, fn in methods.items():
        rows[name] = {
            "time_us": wall_us(fn, args.repeats if name != "finetune" else max(20, args.repeats // 10)),
            "flops": flops(fn),
            "peak_bytes": peak_memory_bytes(fn),
        }
    ft, b0 = rows["finetune"], rows["base"]
    for r in rows.values():
        r["time_ratio_vs_finetune"] = ft["time_us"] / r["time_us"]
        r["flops_ratio_vs_finetune"] = ft["flops"] / max(r["flops"], 1)
        # the adaptation's own cost: what it adds to ranking with the base head
        r["adapt_us"] = max(r["time_us"] - b0["time_us"], 0.0)
    for r in rows.values():
        r["adapt_ratio_vs_finetune"] = ft["adapt_us"] / r["adapt_us"] if r["adapt_us"] > 0 else float("nan")
    floats_full = n_layers * (d * d + d)
    payload = {
        "uplink_item_ids_int32": 4 * args.window,
        "uplink_semantic_codes_uint8": args.window * args.levels,
        "downlink_full_dW_fp32": 4 * floats_full,
        "downlink_lowrank_dW_fp32": 4 * n_layers * (2 * d * args.rank + d),
        "downlink_prototype_id_plus_residual_code_fp16": 2 + 2 * n_layers * args.code_dim,
        "downlink_prototype_id_only": 2,
        "one_time_cache_prototype_bank_fp32": 4 * args.prototypes * (floats_full + d),
        "one_time_cache_adapter_projections_fp32": 4 * n_layers * (d * d + d) * args.code_dim,
    }
    lines = [
        f"# Adaptation cost on the device (batch 1, 1 thread, {source}, {n_items} items, D={d}, L={n_layers})",
        "",
        "| method | time (µs, median) | × faster than fine-tuning | adaptation µs (over base) | × faster "
        "(adaptation only) | FLOPs | × fewer FLOPs | peak torch alloc (KB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['time_us']:.1f} | {r['time_ratio_vs_finetune']:.1f} | {r['adapt_us']:.1f} | "
            f"{r['adapt_ratio_vs_finetune']:.0f} | {r['flops']:,} | "
            f"{r['flops_ratio_vs_finetune']:.1f} | {r['peak_bytes'] / 1024:.1f} |"
        )
    lines += ["", "| bytes per adaptation | bytes |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in payload.items()]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adaptation_cost.json").write_text(json.dumps({"source": source, "rows": rows, "bytes": payload}, indent=1))
    (out / "adaptation_cost.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
