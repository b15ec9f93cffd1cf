"""The torch-free device runtime vs the torch one: ms per ranking at batch 1, file sizes, identical rankings.

Exports the main job's checkpoint (``runs/<dataset>/<model>/seed0``) twice: the folded ``state_dict``
(``persona export``) and the ONNX graphs (``persona export --format onnx``), into a temporary folder. Ranks the
last 50 items of ``--rows`` test-split rows (seen items excluded, top 10) with ``recsys.runtime.DeviceRuntime``
(torch eager, one thread) and ``persona_device.runtime.OnnxDeviceRuntime`` (onnxruntime, one thread), in turns,
``--repeats`` times; reports the median ms per ranking of each, how many top-10 lists agree, the sizes, and
the load average (the machine is shared: compare only numbers of one run). Writes
``reports/benchmarks/device_runtime.{json,md}``.

    python benchmarks/device_runtime.py [--dataset ml-100k] [--model sasrec] [--rows 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from persona_device.runtime import OnnxDeviceRuntime
from recsys import run_layout
from recsys.checkpoint import export_for_device
from recsys.models import score_with_edit
from recsys.onnx_export import OnnxExportOptions, export_checkpoint_onnx
from recsys.runtime import DeviceRuntime

ROOT = Path(__file__).resolve().parents[1]


def histories(dataset: str, rows: int) -> list[list[int]]:
    from recsys.config import load_config
    from recsys.experiment import load_dataset_split

    test = load_dataset_split(load_config(overrides=[f"dataset={dataset}"])).eval_rows("test")
    step = max(len(test) // rows, 1)
    return [test["item_id_list"][i, : test["item_length"][i]].tolist() for i in range(0, step * rows, step)]


def ms_per_ranking(runtime, hists: list[list[int]]) -> float:
    start = time.perf_counter()
    for h in hists:
        runtime.rank(h, 10, set(h))
    return (time.perf_counter() - start) / len(hists) * 1e3


def model_only(torch_rt: DeviceRuntime, onnx_rt: OnnxDeviceRuntime, hists: list[list[int]]) -> dict[str, float]:
    """ms per ranking of the bare models (state → base head → scores → top 10; inputs prepared beforehand)."""
    rows = [torch_rt.encode_history(h) for h in hists]
    rows = [(seq[:, : int(n)], n) for seq, n in rows]
    no_edit, keep = onnx_rt.model.no_edit(1), np.zeros((1, onnx_rt.n_items), bool)

    def torch_pass():
        for seq, n in rows:
            torch.topk(score_with_edit(torch_rt.model, seq, n), 10)

    def onnx_pass():
        for seq, n in rows:
            onnx_rt.model.rank(onnx_rt.model.user_states(seq.numpy(), n.numpy()), *no_edit, keep)

    out = {}
    for name, run in (("torch", torch_pass), ("onnx", onnx_pass)):
        run()
        start = time.perf_counter()
        run()
        out[name] = (time.perf_counter() - start) / len(rows) * 1e3
    return out


def sizes(ckpt: Path, tmp: Path) -> dict[str, int]:
    folded = export_for_device(ckpt, tmp / "device")
    onnx = export_checkpoint_onnx(ckpt, tmp / "onnx", OnnxExportOptions())
    graphs = ["encoder.onnx", "ranker.onnx", "items.npy"]
    return {"checkpoint_model_pt": (ckpt / "model.pt").stat().st_size,
            "folded_model_pt": (folded / "model.pt").stat().st_size,
            **{f"onnx_{name}": (onnx / name).stat().st_size for name in graphs},
            "onnx_total": sum((onnx / name).stat().st_size for name in graphs)}  # fmt: skip


def measure(ckpt: Path, tmp: Path, hists: list[list[int]], repeats: int) -> dict:
    runtimes = {"torch": DeviceRuntime.load(ckpt), "onnx": OnnxDeviceRuntime.load(tmp / "onnx", threads=1)}
    same = sum(runtimes["torch"].rank(h, 10, set(h))[0] == runtimes["onnx"].rank(h, 10, set(h))[0] for h in hists)
    for rt in runtimes.values():
        ms_per_ranking(rt, hists[:20])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(repeats):
        for name, rt in runtimes.items():
            times[name].append(ms_per_ranking(rt, hists))
    ms = {name: statistics.median(t) for name, t in times.items()}
    bare = [model_only(runtimes["torch"], runtimes["onnx"], hists) for _ in range(repeats)]
    bare_ms = {name: statistics.median(b[name] for b in bare) for name in runtimes}
    return {"ms_per_ranking": ms, "speedup": ms["torch"] / ms["onnx"], "model_only_ms": bare_ms,
            "model_only_speedup": bare_ms["torch"] / bare_ms["onnx"], "top10_identical": same, "rows": len(hists)}


def markdown(r: dict) -> str:
    s, m, b = r["sizes"], r["ms_per_ranking"], r["model_only_ms"]
    return "\n".join([
        f"# Device runtime: torch eager vs onnxruntime ({r['dataset']} {r['model']}, seed 0)", "",
        f"Batch 1, one thread each, {r['rows']} test-split histories (seen items excluded, top 10), median of "
        f"{r['repeats']} turns; load average {r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after "
        f"(2 shared cores).", "",
        "| runtime | ms per ranking | top-10 identical | files |", "|---|---|---|---|",
        f"| torch eager (`recsys.runtime.DeviceRuntime`) | {m['torch']:.3f} | – | folded model.pt "
        f"{s['folded_model_pt']:,} B (training checkpoint {s['checkpoint_model_pt']:,} B) |",
        f"| onnxruntime (`persona_device.runtime.OnnxDeviceRuntime`) | {m['onnx']:.3f} ({r['speedup']:.1f}×) | "
        f"{r['top10_identical']} / {r['rows']} | encoder {s['onnx_encoder.onnx']:,} + ranker "
        f"{s['onnx_ranker.onnx']:,} + item table {s['onnx_items.npy']:,} = {s['onnx_total']:,} B |", "",
        f"The bare models (user state → base head → scores → top 10, no runtime around them): torch eager "
        f"{b['torch']:.3f} ms, onnxruntime {b['onnx']:.3f} ms ({r['model_only_speedup']:.1f}×).", "",
        f"Checkpoint `{r['checkpoint']}`; `{r['command']}`", ""])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="checkpoints' output_dir (runs/small: D=32)")
    parser.add_argument("--name", default="device_runtime", help="report stem")
    args = parser.parse_args()
    ckpt = run_layout.seed_dir(Path(args.runs), args.dataset, args.model, 0)
    if not (ckpt / "model.yaml").is_file():
        print(f"no checkpoint at {ckpt}: run `make run` (or `persona train dataset={args.dataset}`)")
        return 2
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    hists = histories(args.dataset, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        size = sizes(ckpt, Path(tmp))
        result = measure(ckpt, Path(tmp), hists, args.repeats)
    result |= {"dataset": args.dataset, "model": args.model, "repeats": args.repeats, "sizes": size,
               "load_before": load_before, "load_after": os.getloadavg(),
               "checkpoint": str(ckpt.relative_to(ROOT)) if ckpt.is_relative_to(ROOT) else str(ckpt),
               "command": "python " + " ".join(["benchmarks/device_runtime.py", *sys.argv[1:]])}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
