"""Bytes on the wire per adaptation, measured from the cloud's HTTP responses, per edit encoding.

Starts the real cloud service (``persona serve --role cloud``) on 127.0.0.1 serving the edit source
``--source`` (``serve.cloud.edit_source``: ``adapter``, the trained adapter + prototype bank; ``distilled``, the edit
distilled from the teacher, by default the main job's checkpoints), fetches the bank snapshot as a device does
(``GET /v1/prototypes``, once, then cached), and asks ``POST /v1/edits`` for the same real histories (the last
20 items of test-split rows) in each encoding. For each encoding: response bytes (mean / max, the whole HTTP
body the device receives; the response head beside it), the largest absolute difference of the device-decoded
edit from the ``json`` edit, and the share of rows whose device top-10 equals the one under the ``json`` edit.
Writes ``reports/benchmarks/edit_bytes.{json,md}`` (``--source distilled``: ``edit_bytes-distilled-<dataset>``).

    python benchmarks/edit_bytes.py [--dataset ml-100k] [--model sasrec] [--rows 200] [--source adapter]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import httpx
import torch

from recsys import run_layout
from recsys.experiment import load_dataset_split
from recsys.runtime import DeviceRuntime
from recsys.wire import ENCODINGS, EditPayload, PrototypeSnapshot
from serving.config import load_app_config
from serving.local_services import free_port, serve_command, start_service, stop

ROOT = Path(__file__).resolve().parents[1]

API_KEY = "bench-bytes-key"


def head_bytes(r: httpx.Response) -> int:
    """The response head as sent: status line, headers, blank line (HTTP/1.1)."""
    status = len(f"HTTP/1.1 {r.status_code} {r.reason_phrase}\r\n")
    return status + sum(len(k) + len(v) + 4 for k, v in r.headers.raw) + 2


def sample_histories(dataset: str, runtime: DeviceRuntime, n: int) -> list[list[str]]:
    """The last 20 items (tokens) of ``n`` test rows spread over the test split."""
    rows = load_dataset_split(load_app_config(overrides=[f"dataset={dataset}"])).eval_rows("test")
    step = max(len(rows) // n, 1)
    out = []
    for i in range(0, len(rows), step)[:n]:
        length = int(rows["item_length"][i])
        out.append([str(runtime.item_tokens[j]) for j in rows["item_id_list"][i, :length].tolist()][-20:])
    return out


def ask_cloud(ckpt: Path, source: str, histories: list[list[str]]) -> tuple[bytes, dict[str, list[tuple]]]:
    """The real cloud's bank snapshot (body) and its answer to every history in every encoding (body, head
    bytes), as a device caching that bank receives them."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cmd = serve_command("cloud", port, [f"serve.checkpoint={ckpt}", f"serve.api_key={API_KEY}",
                                            f"data.workdir={ROOT / 'data' / 'atomic'}", f"output_dir={ROOT / 'runs'}",
                                            f"serve.cloud.edit_source={source}"])  # fmt: skip
        proc = start_service(cmd, port, Path(tmp) / "cloud.log", "cloud")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as c:  # fmt: skip
                snapshot = c.get("/v1/prototypes").content
                version = PrototypeSnapshot.model_validate_json(snapshot).version
                answers = {e: [] for e in ENCODINGS}
                for items in histories:
                    for e in ENCODINGS:
                        r = c.post("/v1/edits", json={"items": items, "encoding": e, "bank_version": version})
                        r.raise_for_status()
                        answers[e].append((r.content, head_bytes(r)))
        finally:
            stop(proc)
    return snapshot, answers


def score_encodings(runtime: DeviceRuntime, histories: list[list[str]], answers: dict[str, list[tuple]]) -> dict:
    """Per encoding: bytes, and the device-decoded edit (:meth:`DeviceRuntime.decode_edit`) against the ``json``
    one: the largest absolute difference and the share of rows with the same top 10."""
    results, reference = {}, []
    for e in ENCODINGS:  # json first: the reference
        sizes, errs, same = [], [], []
        for i, (raw, _) in enumerate(answers[e]):
            edit = runtime.decode_edit(EditPayload.model_validate_json(raw))
            ids = [runtime.token_to_id[t] for t in histories[i] if t in runtime.token_to_id]
            top, _ = runtime.rank(ids, 10, exclude=set(ids), edit=edit)
            if e == "json":
                reference.append((edit, top))
            ref_edit, ref_top = reference[i]
            errs.append(max(float((a - b).abs().max()) for a, b in zip(edit.dW + edit.db, ref_edit.dW + ref_edit.db)
                            if a is not None))  # fmt: skip
            same.append(top == ref_top)
            sizes.append(len(raw))
        first = EditPayload.model_validate_json(answers[e][0][0])
        results[e] = {
            "encoding_used": first.encoding,
            "parts": first.parts,
            "bytes_mean": sum(sizes) / len(sizes),
            "bytes_max": max(sizes),
            "head_bytes_mean": sum(h for _, h in answers[e]) / len(answers[e]),
            "max_abs_error_vs_json": max(errs),
            "same_top10_share": sum(same) / len(same),
        }
    return results


def report(args, snapshot: PrototypeSnapshot, meta: dict, results: dict) -> str:
    lines = [
        f"# Bytes per adaptation on the wire ({args.dataset}, {args.model} seed 0, {meta['rows']} test histories, "
        f"serve.cloud.edit_source={args.source})",
        "",
        "Measured as the HTTP response bodies of `POST /v1/edits` that a device receives from the real cloud "
        f"service (`{snapshot.version}`; the response head, status line and headers, beside it); the bank snapshot "
        f"(`GET /v1/prototypes`, fetched once and cached) is {meta['snapshot_bytes']:,} bytes ({snapshot.size} "
        f"prototypes, D={snapshot.dim}).",
        "",
        "| encoding asked | sent as | bytes per edit (mean) | max | × fewer than json | response head bytes "
        "| max abs error vs json | same top-10 as json |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = results["json"]["bytes_mean"]
    for e, r in results.items():
        sent = r["encoding_used"] + (f" ({', '.join(r['parts'])} only)" if r["parts"] else "")
        lines.append(
            f"| {e} | {sent} | {r['bytes_mean']:,.0f} | {r['bytes_max']:,} | {base / r['bytes_mean']:.0f} | "
            f"{r['head_bytes_mean']:,.0f} | {r['max_abs_error_vs_json']:.2e} | {100 * r['same_top10_share']:.1f} % |"
        )
    return "\n".join([*lines, "", f"Command: `{meta['command']}`.", ""])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--source", choices=["adapter", "distilled"], default="adapter", help="serve.cloud.edit_source")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    ckpt = run_layout.seed_dir(ROOT / "runs", args.dataset, args.model, 0)
    if args.source == "adapter" and not run_layout.adapter_dir(ckpt).is_dir():
        print(f"no adapter at {run_layout.adapter_dir(ckpt)}:"
              f" run `make run` (or `persona adapter dataset={args.dataset}`)")
        return 2
    runtime = DeviceRuntime.load(ckpt)
    histories = sample_histories(args.dataset, runtime, args.rows)
    raw_snapshot, answers = ask_cloud(ckpt, args.source, histories)
    snapshot = PrototypeSnapshot.model_validate_json(raw_snapshot)
    runtime.set_prototypes(snapshot)  # cached, as a device does: code edits decode against it
    results = score_encodings(runtime, histories, answers)
    meta = {
        "dataset": args.dataset, "model": args.model, "source": args.source, "version": snapshot.version,
        "rows": len(histories), "snapshot_bytes": len(raw_snapshot), "prototypes": snapshot.size,
        "dim": snapshot.dim, "torch": torch.__version__, "machine": f"{os.cpu_count()} CPU cores",
        "command": "python " + " ".join(["benchmarks/edit_bytes.py", *sys.argv[1:]]),
    }  # fmt: skip
    text = report(args, snapshot, meta, results)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "edit_bytes" if args.source == "adapter" else f"edit_bytes-distilled-{args.dataset}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
