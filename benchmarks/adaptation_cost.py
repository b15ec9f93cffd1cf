"""Per-adaptation cost on the device: Persona (edit / prototype) vs on-device fine-tuning, one run.

Measures, at batch 1 and one thread (a device serving its own user): wall time (median of repeats),
FLOPs (``torch.utils.flop_counter``) and peak memory allocated by torch during the step (profiler
memory events), for
  base          score the catalogue with the base head
  persona-edit  apply a received full ΔW (clip) + score
  persona-lowrank  apply a received rank-r ΔW = U V + score
  proto-cached  pick the prototype on device (``DeviceRuntime.assign``: nearest signature) + apply its cached edit
                (``DeviceRuntime.prototype_edit``) + score
  proto-residual  decode a received ``code`` edit (prototype id + per-layer code) with the cached bank's decoder,
                  as the device does (``DeviceRuntime.decode_edit``) + score
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from recsys.checkpoint import load_checkpoint
from recsys.config import ModelConfig
from recsys.finetune import finetune_edit
from recsys.models import EditableSeqRec, HeadEdit
from recsys.runtime import DeviceRuntime
from recsys.wire import EditDecoder, EditPayload, PrototypeSnapshot, pack

ROOT = Path(__file__).resolve().parents[1]
VERSION = "bench"


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


def device_model(checkpoint: str) -> tuple[EditableSeqRec, np.ndarray, str]:
    """The checkpoint's model and item tokens, else a random SASRec of the ml-100k device model's shapes."""
    if Path(checkpoint, "model.yaml").is_file():
        model, _, tokens = load_checkpoint(Path(checkpoint))
        return model.eval(), tokens, checkpoint
    model = EditableSeqRec("sasrec", ModelConfig(item_side="none"), 1683, 50)
    return model.eval(), np.array([str(i) for i in range(model.n_items)]), "random sasrec (no checkpoint found)"


def random_edit(d: int, n_layers: int, clip: float) -> HeadEdit:
    return HeadEdit([torch.randn(d, d) * 0.05 for _ in range(n_layers)],
                    [torch.randn(d) * 0.05 for _ in range(n_layers)], clip)  # fmt: skip


def cached_bank(model: EditableSeqRec, args) -> PrototypeSnapshot:
    """A bank as the device caches it: random signatures, each prototype a random edit, and the decoder of ``code``
    edits (random linear code → edit maps, as an adapter's)."""
    d, n_layers = model.head.dim, len(model.head.layers)
    edits = [EditPayload.from_head_edit(random_edit(d, n_layers, 1.0), VERSION, k, "fp32")
             for k in range(args.prototypes)]  # fmt: skip
    out = d * d + d  # rows of dW then db
    decoder = EditDecoder(
        n_layers=n_layers, dim=d, code_dim=args.code_dim, clip=0.5, residual_clip=0.5, total_clip=1.0,
        weights=pack(torch.randn(n_layers, out, args.code_dim) * 0.01, "<f4"),
        biases=pack(torch.zeros(n_layers, out), "<f4"),
        centres=pack(torch.randn(args.prototypes, n_layers, args.code_dim), "<f4"), n_prototypes=args.prototypes,
    )  # fmt: skip
    return PrototypeSnapshot(version=VERSION, dim=d, signatures=torch.randn(args.prototypes, d).tolist(), edits=edits,
                             decoder=decoder)  # fmt: skip


def methods(runtime: DeviceRuntime, args) -> dict[str, Callable[[], object]]:
    """Each adaptation as the device runs it for one request (a 40-item history), ending in its top 10."""
    model = runtime.model
    d, n_layers = model.head.dim, len(model.head.layers)
    seq = torch.zeros(1, model.max_seq_len, dtype=torch.long)
    seq[0, :40] = torch.randint(1, model.n_items, (40,))
    length = torch.tensor([40])
    full = random_edit(d, n_layers, 0.1)
    u = [torch.randn(d, args.rank) * 0.1 for _ in range(n_layers)]
    v = [torch.randn(args.rank, d) * 0.1 for _ in range(n_layers)]
    code = EditPayload.from_code(torch.randn(n_layers, args.code_dim), VERSION, 0, 1.0, d)  # received: prototype 0

    def top10(edit=None, state=None):
        state = model.user_state(seq, length) if state is None else state
        return torch.topk(model.logits(model.head(state, edit)), 10)

    def inference(fn):
        def run():
            with torch.inference_mode():
                fn()

        return run

    def proto_cached():
        state = model.user_state(seq, length)
        k, _ = runtime.assign(state[0])
        top10(runtime.prototype_edit(k), state)

    def finetune():
        edit = finetune_edit(model, seq, length, args.window, steps=5)
        with torch.inference_mode():
            top10(edit)

    return {
        "base": inference(top10),
        "persona-edit": inference(lambda: top10(full)),
        "persona-lowrank": inference(lambda: top10(HeadEdit([a @ b for a, b in zip(u, v)], full.db, 0.1))),
        "proto-cached": inference(proto_cached),
        "proto-residual": inference(lambda: top10(runtime.decode_edit(code))),
        "finetune": finetune,
    }


def measure(fns: dict[str, Callable], repeats: int) -> dict[str, dict]:
    """Time, FLOPs and peak memory of each; ratios against fine-tuning, and each adaptation's own cost (its time
    over ranking with the base head)."""
    rows = {}
    for name, fn in fns.items():
        rows[name] = {
            "time_us": wall_us(fn, repeats if name != "finetune" else max(20, repeats // 10)),
            "flops": flops(fn),
            "peak_bytes": peak_memory_bytes(fn),
        }
    ft, b0 = rows["finetune"], rows["base"]
    for r in rows.values():
        r["time_ratio_vs_finetune"] = ft["time_us"] / r["time_us"]
        r["flops_ratio_vs_finetune"] = ft["flops"] / max(r["flops"], 1)
        r["adapt_us"] = max(r["time_us"] - b0["time_us"], 0.0)
    for r in rows.values():
        r["adapt_ratio_vs_finetune"] = ft["adapt_us"] / r["adapt_us"] if r["adapt_us"] > 0 else float("nan")
    return rows


def payload_bytes(d: int, n_layers: int, args) -> dict[str, int]:
    """Bytes each adaptation moves: uplink (the window), downlink (the edit), and what the device caches once."""
    floats_full = n_layers * (d * d + d)
    return {
        "uplink_item_ids_int32": 4 * args.window,
        "uplink_semantic_codes_uint8": args.window * args.levels,
        "downlink_full_dW_fp32": 4 * floats_full,
        "downlink_lowrank_dW_fp32": 4 * n_layers * (2 * d * args.rank + d),
        "downlink_prototype_id_plus_residual_code_fp16": 2 + 2 * n_layers * args.code_dim,
        "downlink_prototype_id_only": 2,
        "one_time_cache_prototype_bank_fp32": 4 * args.prototypes * (floats_full + d),
        "one_time_cache_adapter_projections_fp32": 4 * n_layers * (d * d + d) * args.code_dim,
    }


def report(rows: dict, payload: dict, title: str) -> str:
    lines = [
        title,
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
    return "\n".join(lines + [f"| {k} | {v:,} |" for k, v in payload.items()])


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "runs/ml-100k/sasrec/seed0"))
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--prototypes", type=int, default=8)
    ap.add_argument("--code-dim", type=int, default=64)
    ap.add_argument("--levels", type=int, default=3, help="semantic-ID levels (8-bit codes)")
    ap.add_argument("--out", default=str(ROOT / "reports/benchmarks"))
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tokens, source = device_model(args.checkpoint)
    runtime = DeviceRuntime(model, tokens)
    runtime.set_prototypes(cached_bank(model, args))
    rows = measure(methods(runtime, args), args.repeats)
    d, n_layers = model.head.dim, len(model.head.layers)
    payload = payload_bytes(d, n_layers, args)
    text = report(rows, payload, f"# Adaptation cost on the device (batch 1, 1 thread, {source}, {model.n_items} "
                                 f"items, D={d}, L={n_layers})")  # fmt: skip
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adaptation_cost.json").write_text(json.dumps({"source": source, "rows": rows, "bytes": payload}, indent=1))
    (out / "adaptation_cost.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
