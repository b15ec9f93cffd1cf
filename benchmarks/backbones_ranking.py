"""Which LLM backbone helps the device model most? Ranking quality per backbone, side by side (issue 12).

Each row runs the user's own commands (``persona codebook``, ``persona train``, ``persona evaluate``) in
a subprocess: the backbone encodes the item texts, the codebook writes the side file, the device model
reads it through ``model_params.item_side=fused`` (``id-only`` is ``item_side=none``, no LLM), and
RecBole's full ranking scores the test split, 3 seeds. ``openai-own`` encodes through the project's own
OpenAI-compatible ``/v1/embeddings`` (MiniLM behind a real uvicorn server on 127.0.0.1): it must equal
``minilm``, and the script prints the largest difference between the two side files.

Then each backbone's Persona methods (``--methods``, default ``edit,served``; ``served`` is what the
cloud service runs): ``persona evaluate --methods static,…`` with the adapter trained to its plateau
(``adapter.epochs=30``) on that backbone's device model and codebook; ``id-only``'s adapter reads no
semantic codes either (``adapter.use_codebook=false``: no LLM anywhere).

A row whose report exists for the same item view (the report's ``item_side``) is read, not rerun
(``--force`` reruns); a backbone's codebook (side file) is built once per dataset and shared by its models.
``id-only`` shares its run and report directories with docs/item_side.md's ``none``
rows, ``minilm`` is the default (``persona run``'s runs and reports).

    python benchmarks/backbones_ranking.py [--dataset ml-100k] [--model sasrec] [--backbones id-only,minilm,...]
        [--methods edit,served] [--adapter-backbones id-only,minilm] [--no-adapter] [--side-only]

Writes ``reports/benchmarks/backbones_ranking-<dataset>-<model>.{md,json}``: one table per dataset and model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from recsys import run_layout
from serving.local_services import PERSONA, free_port, start_service, stop

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {  # name → (runs directory, reports directory, overrides, the adapter's own overrides)
    "id-only": ("runs/item-side/none", "reports/item_side/none", ["model_params.item_side=none"],
                ["adapter.use_codebook=false"]),  # no LLM anywhere: the adapter reads no semantic codes either
    "minilm": ("runs", "reports", ["model_params.item_side=fused", "backbone.name=sentence-transformers"], []),
    "smollm2": ("runs/backbones/smollm2", "reports/backbones/smollm2",
                ["model_params.item_side=fused", "backbone.name=hf"], []),
    "openai-own": ("runs/backbones/openai-own", "reports/backbones/openai-own",
                   ["model_params.item_side=fused", "backbone.name=openai-http", "backbone.cache=false"], []),
}
ADAPTER = ["adapter.epochs=30"]  # to the adapter's own validation plateau (patience), as docs/adaptation_results.md
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
    print("+ persona " + " ".join(args), flush=True)
    subprocess.run([*PERSONA, *args], cwd=ROOT, check=True)


@contextmanager
def own_embeddings_server():
    """The project's ``/v1/embeddings`` (MiniLM) in its own process; yields its base URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="embeddings-") as tmp:
        proc = start_service([sys.executable, "-c", SERVER, str(port)], port, Path(tmp) / "server.log",
                             "own /v1/embeddings", timeout_s=60)  # fmt: skip
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            stop(proc)


def _common(name: str, dataset: str) -> list[str]:
    runs, reports, overrides, _ = BACKBONES[name]
    return [f"dataset={dataset}", f"output_dir={runs}", f"reports_dir={reports}", *overrides]


def _item_side(name: str) -> str:
    return next(o.split("=", 1)[1] for o in BACKBONES[name][2] if o.startswith("model_params.item_side="))


def _reported(path: Path, name: str, wanted: list[str]) -> dict | None:
    """The report's runs if it holds ``wanted`` for this backbone's item view (and, for an adaptation
    report, its adapter overrides such as ``adapter.use_codebook=false``), else None (to be rerun)."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    meta, adapter = report["meta"], report["meta"].get("adapter")  # adapter: adaptation reports only
    overrides = (o.split("=", 1) for o in BACKBONES[name][3])  # adapter.<key>=<value>
    same = meta.get("item_side") == _item_side(name) and (adapter is None or all(
        str(adapter.get(key.split(".", 1)[1])).lower() == value.lower() for key, value in overrides))
    return report["runs"] if same and all(w in report["runs"] for w in wanted) else None


def _adaptation_report(name: str, dataset: str, model: str) -> Path:
    return ROOT / BACKBONES[name][1] / dataset / f"adaptation-{model}.json"


def build_side(name: str, dataset: str, force: bool) -> None:
    """``persona codebook`` with this backbone unless its side file exists (it serves all the backbone's models)."""
    if name == "id-only" or (not force and run_layout.item_side_file(ROOT / BACKBONES[name][0], dataset).is_file()):
        return
    common = _common(name, dataset)
    if name == "openai-own":
        with own_embeddings_server() as url:
            persona("codebook", *common, f"backbone.openai_http.base_url={url}")
    else:
        persona("codebook", *common)


def run_backbone(name: str, dataset: str, model: str, force: bool, need_checkpoints: bool) -> dict:
    runs_dir, reports, _, _ = BACKBONES[name]
    common = _common(name, dataset)
    report = ROOT / reports / dataset / "base.json"
    side = run_layout.item_side_file(ROOT / runs_dir, dataset)
    trained = (run_layout.seed_dir(ROOT / runs_dir, dataset, model, 0) / "model.pt").is_file()
    missing = need_checkpoints and not trained  # the adapter rows train on this backbone's device models
    if force or missing or _reported(report, name, [model]) is None:
        build_side(name, dataset, force)
        persona("train", f"model={model}", *common)
        persona("evaluate", "--models", f"pop,{model}", *common)
    written = json.loads(report.read_text())
    runs = written["runs"][model]
    out = {"backbone": name, "label": LABELS[name], "seeds": len(runs), "report": str(report.relative_to(ROOT)),
           "protocol": written["meta"]["protocol"]}
    for key in ["ndcg@10", "hit@10", "mrr@10", "new/hit@10", "seen/hit@10", "tail/hit@10"]:
        vals = np.array([r.get(key, np.nan) for r in runs])  # reports from before the slices have none
        out[key] = (float(vals.mean()), float(vals.std()))
    if side.is_file():
        with np.load(side) as z:
            out["dim"] = int(z["vectors"].shape[1])
    return out


def run_methods(name: str, dataset: str, model: str, methods: list[str], force: bool) -> dict:
    """``static`` + ``methods`` on this backbone's device model (adapters trained here unless reported)."""
    reports = _adaptation_report(name, dataset, model)
    have = _reported(reports, name, ["static", *methods])
    if force or have is None:
        extra = ADAPTER + BACKBONES[name][3]
        persona("evaluate", "--methods", ",".join(["static", *methods]), f"model={model}",
                *_common(name, dataset), *extra)
        have = json.loads(reports.read_text())["runs"]
    out = {"backbone": name, "label": LABELS[name], "report": str(reports.relative_to(ROOT))}
    for m in ["static", *methods]:
        out[m] = {k: [r[k] for r in have[m]] for k in ["ndcg@10", "hit@10", "tail/hit@10"]}
    return out


def methods_table(rows: list[dict], methods: list[str], id_only: float | None = None) -> str:
    """NDCG@10 per backbone and method; gains vs the same backbone's static model and vs ID-only static
    (from its methods row, else ``id_only``: the static table's, the same checkpoints)."""
    base = next((np.mean(r["static"]["ndcg@10"]) for r in rows if r["backbone"] == "id-only"), id_only)
    head = "| backbone | seeds | static NDCG@10 | " + " | ".join(f"{m} NDCG@10 (vs static)" for m in methods)
    shown = "served" if "served" in methods else methods[-1]  # what the service runs; no pick on test
    lines = [head + f" | {shown} vs ID-only static |", "|---|---|---|" + "---|" * len(methods) + "---|"]
    for r in rows:
        st = np.array(r["static"]["ndcg@10"])
        cells = []
        for m in methods:
            v = np.array(r[m]["ndcg@10"])
            cells.append(f"{v.mean():.4f} ± {v.std():.4f} ({100 * np.mean(v / st - 1):+.1f} %)")
        gain = "–" if base is None else f"{100 * (np.mean(r[shown]['ndcg@10']) / base - 1):+.1f} %"
        lines.append(f"| {r['label']} | {len(st)} | {st.mean():.4f} ± {st.std():.4f} | {' | '.join(cells)} | {gain} |")
    return "\n".join(lines)


def side_difference(dataset: str) -> float | None:
    """Largest absolute difference between the MiniLM and own-endpoint side files' item vectors."""
    a = run_layout.item_side_file(ROOT / BACKBONES["minilm"][0], dataset)
    b = run_layout.item_side_file(ROOT / BACKBONES["openai-own"][0], dataset)
    if not (a.is_file() and b.is_file()):
        return None
    with np.load(a) as za, np.load(b) as zb:
        if list(za["item_ids"]) != list(zb["item_ids"]):
            return float("inf")
        return float(np.abs(za["vectors"] - zb["vectors"]).max())


def id_only_static(rows: list[dict]) -> float | None:
    """Mean test NDCG@10 of the ID-only static device model, if it is among the rows."""
    return next((r["ndcg@10"][0] for r in rows if r["backbone"] == "id-only"), None)


def table(rows: list[dict]) -> str:
    base = id_only_static(rows)
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
    ap.add_argument("--methods", default="edit,served", help="Persona methods per backbone (persona evaluate)")
    ap.add_argument("--adapter-backbones", default=None,
                    help="backbones that get the Persona-method rows (default: all of --backbones)")
    ap.add_argument("--no-adapter", action="store_true", help="static device models only")
    ap.add_argument("--force", action="store_true", help="rerun rows whose report exists")
    ap.add_argument("--side-only", action="store_true",
                    help="only build the backbones' side files and print openai-own vs minilm (nothing trained)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    names = args.backbones.split(",")
    if args.side_only:
        for b in names:
            build_side(b, args.dataset, args.force)
        diff = side_difference(args.dataset)
        print(f"openai-own vs minilm side files on {args.dataset}: largest |difference| {diff}")
        return
    with_adapter = [] if args.no_adapter else (args.adapter_backbones or args.backbones).split(",")
    methods = [m for m in args.methods.split(",") if m]
    rows = [run_backbone(b, args.dataset, args.model, args.force,
                         b in with_adapter and (args.force or _reported(
                             _adaptation_report(b, args.dataset, args.model), b, ["static", *methods]) is None))
            for b in names]
    adapted = [run_methods(b, args.dataset, args.model, methods, args.force) for b in with_adapter]
    diff = side_difference(args.dataset)
    out = ROOT / "reports" / "benchmarks"
    stem = f"backbones_ranking-{args.dataset}-{args.model}"
    earlier = out / f"{stem}.json"
    if diff is None and earlier.is_file():  # side files not on this machine: keep the measured value
        diff = json.loads(earlier.read_text()).get("side_max_abs_diff")
    md = (f"# LLM backbones compared on ranking: {args.dataset} {args.model}, static device model\n\n"
          "`model_params.item_side=fused` (ID view + trained projection of the frozen whitened LLM view); "
          f"RecBole full ranking, test split, {rows[0]['protocol']} protocol, mean ± std over seeds.\n\n"
          + table(rows) + "\n")
    if diff is not None:
        md += f"\nopenai-own vs minilm side files: largest |difference| {diff:.2e}.\n"
    if adapted:
        md += ("\n## Persona methods per backbone\n\nThe same device models with the cloud's edit "
               "(adapter to its validation plateau, `adapter.epochs=30`; `served` is what the service runs); "
               "mean ± std over seeds, the gain vs static averaged per seed.\n\n"
               + methods_table(adapted, methods, id_only_static(rows)) + "\n")
    md += (f"\nRegenerate: `python benchmarks/backbones_ranking.py --dataset {args.dataset} --model {args.model} "
           f"--backbones {args.backbones}" + (f" --adapter-backbones {','.join(with_adapter)}" if with_adapter
                                               else " --no-adapter")
           + (f" --methods {args.methods}" if with_adapter and args.methods != ap.get_default("methods") else "")
           + "`\n")
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(
        json.dumps({"rows": rows, "methods": adapted, "side_max_abs_diff": diff}, indent=2))


if __name__ == "__main__":
    main()
