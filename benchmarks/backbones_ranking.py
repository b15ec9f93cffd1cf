"""Which LLM backbone helps the device model most? Ranking quality per backbone, side by side (issue 12).

Each row runs the user's own commands (``persona codebook``, ``persona train``, ``persona evaluate``) in
a subprocess: the backbone encodes the item texts, the codebook writes the side file, the device model
reads it through ``model_params.item_side=fused`` (``id-only`` is ``item_side=none``, no LLM), and
RecBole's full ranking scores the test split, 3 seeds. ``openai-own`` encodes through the project's own
OpenAI-compatible ``/v1/embeddings`` (MiniLM behind a real uvicorn server on 127.0.0.1): it must equal
``minilm``, and the script prints the largest difference between the two side files.

A row whose report exists is read, not rerun (``--force`` reruns). ``id-only`` and ``minilm`` share
their run and report directories with docs/item_side.md's ``none`` and ``fused`` rows.

    python benchmarks/backbones_ranking.py [--dataset ml-100k] [--model sasrec] [--backbones id-only,minilm,...]

Writes ``reports/benchmarks/backbones_ranking.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from recsys import run_layout

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {  # name → (run/report directory stem, overrides)
    "id-only": ("item-side/none", ["model_params.item_side=none"]),
    "minilm": ("item-side/fused", ["model_params.item_side=fused", "backbone.name=sentence-transformers"]),
    "smollm2": ("backbones/smollm2", ["model_params.item_side=fused", "backbone.name=hf"]),
    "openai-own": ("backbones/openai-own", ["model_params.item_side=fused", "backbone.name=openai-http",
                                            "backbone.cache=false"]),
}
LABELS = {
    "id-only": "ID only (no LLM)",
    "minilm": "all-MiniLM-L6-v2 (sentence-transformers)",
    "smollm2": "SmolLM2-135M-Instruct GGUF (hf, mean pooling)",
    "openai-own": "openai-http → own /v1/embeddings (MiniLM)",
}
SERVER = (
    "import sys, uvicorn; from llm_cloud.backbones import BackboneConfig, build_backbone;"
    "from serving.embeddings_api import create_embeddings_app;"
    "app = create_embeddings_app(build_backbone(BackboneConfig(progress=False), cached=False));"
    "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level='warning')"
)


def persona(*args: str) -> None:
    cmd = [sys.executable, "-m", "serving.cli", *args]
    print("+ persona " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


@contextmanager
def own_embeddings_server():
    """The project's ``/v1/embeddings`` (MiniLM) in its own process; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=ROOT)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("own /v1/embeddings did not start")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(30)


def run_backbone(name: str, dataset: str, model: str, force: bool) -> dict:
    stem, overrides = BACKBONES[name]
    reports = f"reports/{stem.replace('item-side', 'item_side')}"  # docs/item_side.md's report directories
    common = [f"dataset={dataset}", f"output_dir=runs/{stem}", f"reports_dir={reports}", *overrides]
    report = ROOT / reports / dataset / "base.json"
    side = run_layout.item_side_file(ROOT / "runs" / stem, dataset)
    if force or not report.is_file() or model not in json.loads(report.read_text())["runs"]:
        if name == "openai-own":
            with own_embeddings_server() as url:
                persona("codebook", *common, f"backbone.openai_http.base_url={url}")
        elif name != "id-only":
            persona("codebook", *common)
        persona("train", f"model={model}", *common)
        persona("evaluate", "--models", f"pop,{model}", *common)
    runs = json.loads(report.read_text())["runs"][model]
    out = {"backbone": name, "label": LABELS[name], "seeds": len(runs), "report": str(report.relative_to(ROOT))}
    for key in ["ndcg@10", "hit@10", "mrr@10", "new/hit@10", "seen/hit@10", "tail/hit@10"]:
        vals = np.array([r[key] for r in runs])
        out[key] = (float(vals.mean()), float(vals.std()))
    if side.is_file():
        with np.load(side) as z:
            out["dim"] = int(z["vectors"].shape[1])
    return out


def side_difference(dataset: str) -> float | None:
    """Largest absolute difference between the MiniLM and own-endpoint side files' item vectors."""
    a = run_layout.item_side_file(ROOT / "runs" / BACKBONES["minilm"][0], dataset)
    if not a.is_file():  # the main job's codebook: the default backbone, MiniLM
        a = run_layout.item_side_file(ROOT / "runs", dataset)
    b = run_layout.item_side_file(ROOT / "runs" / BACKBONES["openai-own"][0], dataset)
    if not (a.is_file() and b.is_file()):
        return None
    with np.load(a) as za, np.load(b) as zb:
        if list(za["item_ids"]) != list(zb["item_ids"]):
            return float("inf")
        return float(np.abs(za["vectors"] - zb["vectors"]).max())


def table(rows: list[dict]) -> str:
    base = next((r["ndcg@10"][0] for r in rows if r["backbone"] == "id-only"), None)
    lines = ["| backbone | dim | seeds | NDCG@10 | HR@10 | MRR@10 | vs ID only | new HR@10 | seen HR@10 | tail HR@10 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gain = "–" if base is None or r["backbone"] == "id-only" else f"{100 * (r['ndcg@10'][0] / base - 1):+.1f} %"
        cells = [f"{r[k][0]:.4f} ± {r[k][1]:.4f}" for k in ["ndcg@10", "hit@10", "mrr@10"]]
        cells += [f"{r[k][0]:.4f}" for k in ["new/hit@10", "seen/hit@10", "tail/hit@10"]]
        lines.append(f"| {r['label']} | {r.get('dim', '–')} | {r['seeds']} | {' | '.join(cells[:3])} | {gain} | "
                     f"{' | '.join(cells[3:])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--force", action="store_true", help="rerun rows whose report exists")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    rows = [run_backbone(b, args.dataset, args.model, args.force) for b in args.backbones.split(",")]
    diff = side_difference(args.dataset)
    md = (f"# LLM backbones compared on ranking: {args.dataset} {args.model}, static device model\n\n"
          "`model_params.item_side=fused` (ID view + trained projection of the frozen whitened LLM view); "
          "RecBole full ranking, test split, shift protocol, mean ± std over seeds.\n\n" + table(rows) + "\n")
    if diff is not None:
        md += f"\nopenai-own vs minilm side files: largest |difference| {diff:.2e}.\n"
    md += "\nRegenerate: `python benchmarks/backbones_ranking.py`\n"
    print(md)
    out = ROOT / "reports" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "backbones_ranking.md").write_text(md)
    (out / "backbones_ranking.json").write_text(json.dumps({"rows": rows, "side_max_abs_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
