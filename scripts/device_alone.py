"""The torch-free device runtime alone (no server): fetch the cloud's bank, ask it for an edit, rank with it.

What a device does, with nothing but ``persona_device`` (numpy + onnxruntime) and the standard library: load the
exported model (``persona export --format onnx``), fetch the prototype bank from the cloud (``GET /v1/prototypes``,
kept in a cache file and refetched only when its version changed), ask the cloud for this history's edit
(``POST /v1/edits``, as a compact ``code`` when the bank carries a decoder), decode it and rank the catalogue with
it. Without an answer within ``--budget-ms`` it ranks as the device service would: the cached prototype's edit
where the bank's OOD rule and cache gate allow it, else the base head.

    persona serve --role cloud                    # in another terminal (PERSONA_API_KEY set in both)
    python scripts/device_alone.py --export runs/ml-100k/sasrec/seed0/device-onnx --items 50,172,181
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from persona_device.runtime import OnnxDeviceRuntime  # noqa: E402
from persona_device.wire import Snapshot, pack  # noqa: E402


def call(url: str, key: str, body: dict | None = None, etag: str | None = None, timeout: float = 5.0):
    """``(status, JSON body or None)`` of a GET (``body`` None) or POST to the cloud; 304 has no body."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if etag:
        headers["If-None-Match"] = f'"{etag}"'
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return 304, None
        raise


def sync_bank(rt: OnnxDeviceRuntime, cloud: str, key: str, cache: Path) -> str:
    """The cached bank, refreshed from the cloud when it has a newer one; what happened, in words."""
    if cache.is_file():
        rt.set_prototypes(Snapshot.load(cache))
    current = rt.prototypes.version if rt.prototypes else None
    try:
        status, snap = call(f"{cloud}/v1/prototypes", key, etag=current)
    except (OSError, ValueError) as exc:
        return f"cloud unreachable ({exc}); cached bank {current}"
    if status == 304:
        return f"cached bank {current} is current"
    rt.set_prototypes(Snapshot.from_dict(snap))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(snap))
    return f"fetched bank {snap['version']} ({rt.prototypes.size} prototypes)"


def cloud_edit(rt: OnnxDeviceRuntime, cloud: str, key: str, tokens: list[str], state: np.ndarray, budget_s: float):
    """``(edit payload as a dict, round trip in ms)`` from the cloud for the history ``tokens`` whose user state
    the device computed (``state``, sent: the cloud does not encode the history again), or ``(None, why)``."""
    bank = rt.edit_encoding_ready
    body = {"items": tokens, "encoding": "code" if bank else "fp32", "bank_version": bank,
            "state": pack(state, "<f4")}  # fmt: skip
    t0 = time.perf_counter()
    try:
        _, payload = call(f"{cloud}/v1/edits", key, body, timeout=budget_s)
    except (OSError, ValueError) as exc:
        return None, f"no edit within {budget_s * 1e3:.0f} ms ({exc})"
    return payload, (time.perf_counter() - t0) * 1e3


def rank_alone(rt: OnnxDeviceRuntime, ids: list[int], state: np.ndarray, k: int, payload: dict | None) -> dict:
    """The ranking of the history ``ids`` (user state ``state`` ``[1, D]``) with the cloud's edit, else with what
    the device holds (the device service's rule)."""
    if payload is not None:
        edit = rt.decode_edit(payload)
        kind = "cloud-edit" if edit is not None else "base"
        version, proto = payload["version"], payload.get("prototype_id")
    else:
        protos, _ = rt.assign_batch(state)
        nearest = None if rt.ood_flags(state, protos)[0] else protos[0]  # out of distribution: no prototype
        edit = rt.prototype_edit(nearest)  # None where the bank's cache gate says its edit did not gain
        kind, version, proto = ("prototype-cache", rt.prototypes.version, nearest) if edit else ("base", None, None)
    t0 = time.perf_counter()
    items, scores = rt.rank_states(state, [edit], [k], [set(ids)])[0]
    tok = rt.item_tokens
    return {"adaptation": kind, "version": version, "prototype_id": proto,
            "rank_ms": round((time.perf_counter() - t0) * 1e3, 3),
            "items": [{"item_id": str(tok[i]), "score": s} for i, s in zip(items, scores)]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", required=True, help="the ONNX export dir (persona export --format onnx)")
    p.add_argument("--cloud", default="http://127.0.0.1:8001", help="the cloud service's URL")
    p.add_argument("--api-key", default=os.environ.get("PERSONA_API_KEY"), help="default: $PERSONA_API_KEY")
    p.add_argument("--items", default="50,172,181", help="the device's recent item ids, oldest first")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--budget-ms", type=float, default=500.0, help="how long to wait for the cloud's edit")
    p.add_argument("--cache", help="the bank snapshot file (default: prototypes.json beside the export)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    if not args.api_key:
        p.error("the cloud needs its API key: --api-key or $PERSONA_API_KEY")
    export = Path(args.export)
    rt = OnnxDeviceRuntime.load(export)
    bank = sync_bank(rt, args.cloud.rstrip("/"), args.api_key, Path(args.cache or export.parent / "prototypes.json"))
    tokens = [t for t in args.items.split(",") if t in rt.token_to_id]
    ids = [rt.token_to_id[t] for t in tokens]
    state = rt.user_states([ids])
    payload, rtt = cloud_edit(rt, args.cloud.rstrip("/"), args.api_key, tokens, state[0], args.budget_ms / 1e3)
    result = {"bank": bank, "history": tokens, "cloud_ms": rtt if payload is not None else None,
              **rank_alone(rt, ids, state, args.k, payload)}  # fmt: skip
    if payload is None:
        result["why"] = rtt
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{bank}; history {tokens}")
    cloud = f"the cloud answered in {rtt:.1f} ms" if payload is not None else rtt
    print(f"{cloud}; ranked with {result['adaptation']} (version {result['version']}, prototype "
          f"{result['prototype_id']}) in {result['rank_ms']} ms:")
    for n, item in enumerate(result["items"], 1):
        print(f"{n:3d}. item {item['item_id']:>8s}  score {item['score']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
