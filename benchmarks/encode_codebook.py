"""Encode + codebook benchmark: items/s per backbone, codebook build time, per-query lookup latency.

    python benchmarks/encode_codebook.py [--datasets ml-100k amazon-beauty] [--n-encode 512] [--n-llm 64]

Encoding is timed without the cache (after one warm-up batch). ``openai-http`` is measured against
the project's own ``/v1/embeddings`` (MiniLM behind a real uvicorn server on 127.0.0.1), so its
number is MiniLM plus HTTP/JSON overhead. Lookups run one query at a time on one thread (the
serving case): codebook hits (residual beam encode), codebook ADC top-10 search, exact
``IndexFlatL2`` top-10 search, and semantic-ID prefix → items. Results go to
``reports/benchmarks/encode_codebook.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import uvicorn

from codebook import SemanticCodebook
from llm_cloud.backbones import BackboneConfig, build_backbone
from llm_cloud.backbones.config import OpenAIHTTPConfig
from llm_cloud.context_text import item_texts
from llm_cloud.pipeline import encode_items
from recsys.datasets import prepare, read_items
from serving.config import load_app_config
from serving.embeddings_api import create_embeddings_app
from serving.local_services import free_port


def items_per_s(backbone, texts: list[str], repeat: int = 2) -> float:
    """Best of ``repeat`` timed runs after a warm-up batch (the machine is shared: best = least disturbed)."""
    backbone.encode(texts[: backbone.batch_size])
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        backbone.encode(texts)
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best


def serve_in_thread(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{port}/v1"


def latency_us(fn, queries, repeat: int = 1) -> tuple[float, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn(q)
        times.append((time.perf_counter() - t0) / repeat * 1e6)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def bench_encode(texts: list[str], n_encode: int, n_llm: int) -> list[dict]:
    rows = []
    st = build_backbone(BackboneConfig(progress=False), cached=False)
    rows.append({"backbone": "sentence-transformers (all-MiniLM-L6-v2)", "dim": st.dim, "n": n_encode,
                 "items_per_s": items_per_s(st, texts[:n_encode])})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy machine one intra-op thread beats two fighting for cores
    rows.append({"backbone": "sentence-transformers, 1 torch thread", "dim": st.dim, "n": n_encode,
                 "items_per_s": items_per_s(st, texts[:n_encode])})
    torch.set_num_threads(threads)
    server, url = serve_in_thread(create_embeddings_app(st))
    try:
        cfg = BackboneConfig(name="openai-http", progress=False, openai_http=OpenAIHTTPConfig(base_url=url))
        http = build_backbone(cfg, cached=False)
        rows.append({"backbone": "openai-http (-> own /v1/embeddings, MiniLM)", "dim": 384, "n": n_encode,
                     "items_per_s": items_per_s(http, texts[:n_encode])})
    finally:
        server.should_exit = True
    if n_llm:
        t0 = time.perf_counter()
        hf = build_backbone(BackboneConfig(name="hf", progress=False, batch_size=16), cached=False)
        load_s = time.perf_counter() - t0
        rows.append({"backbone": "hf (SmolLM2-135M-Instruct GGUF, mean)", "dim": hf.dim, "n": n_llm,
                     "items_per_s": items_per_s(hf, texts[:n_llm]), "load_s": load_s})
    return rows


def bench_codebook(dataset: str, n_queries: int) -> dict:
    cfg = load_app_config(None, [f"dataset={dataset}", "backbone.progress=false"])
    enc = encode_items(dataset, cfg.data, cfg.context, build_backbone(cfg.backbone))  # cached embeddings
    t0 = time.perf_counter()
    book = SemanticCodebook.build(enc.embeddings, cfg.codebook, item_ids=enc.item_ids)
    build_s = time.perf_counter() - t0
    x = book.transform(enc.embeddings)
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    rng = np.random.default_rng(0)
    raw = enc.embeddings[rng.choice(len(x), size=min(n_queries, len(x)), replace=False)]
    queries = [raw[i : i + 1] for i in range(len(raw))]
    ids = [tuple(r[:2]) for r in book.hits(raw)]
    row = {
        "dataset": dataset, "n_items": len(x), "dim": x.shape[1], "levels": book.levels, "build_s": build_s,
        "hits_us": latency_us(book.hits, queries),
        "codebook_top10_us": latency_us(lambda q: book.neighbours(q, 10), queries),
        "flat_top10_us": latency_us(lambda q: flat.search(book.transform(q), 10), queries),
        "prefix2_items_us": latency_us(book.items_with_prefix, ids, repeat=5),
    }
    return row


def to_markdown(enc_rows: list[dict], cb_rows: list[dict], meta: dict) -> str:
    load = ", ".join(f"{v:.1f}" for v in meta["load_avg"])
    lines = [f"# Encode + codebook benchmark ({meta['when']}, {meta['cpus']} CPUs, load average {load}; "
             "one thread for lookups)", "",
             "| backbone | dim | texts | items/s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['backbone']} | {r['dim']} | {r['n']} | {r['items_per_s']:.1f} |" for r in enc_rows]
    lines += ["", "| dataset | items | dim | levels | build s | hits p50/p99 µs | codebook top-10 p50/p99 µs "
              "| flat top-10 p50/p99 µs | prefix→items p50/p99 µs |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in cb_rows:
        f = lambda v: f"{v[0]:.0f} / {v[1]:.0f}"
        lines.append(f"| {r['dataset']} | {r['n_items']} | {r['dim']} | {r['levels']} | {r['build_s']:.1f} | "
                     f"{f(r['hits_us'])} | {f(r['codebook_top10_us'])} | {f(r['flat_top10_us'])} | "
                     f"{f(r['prefix2_items_us'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "amazon-beauty"])
    ap.add_argument("--n-encode", type=int, default=512, help="texts per MiniLM / openai-http run")
    ap.add_argument("--n-llm", type=int, default=64, help="texts for SmolLM2 (0 skips it)")
    ap.add_argument("--n-queries", type=int, default=500)
    ap.add_argument("--out", default="reports/benchmarks")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_app_config(None, ["dataset=ml-100k"])
    texts = item_texts(read_items(prepare("ml-100k", cfg.data), "ml-100k"), cfg.data.text_template, cfg.context)
    texts = (texts * (args.n_encode // len(texts) + 1))[: max(args.n_encode, args.n_llm)]
    enc_rows = bench_encode(texts, args.n_encode, args.n_llm)
    faiss.omp_set_num_threads(1)
    cb_rows = [bench_codebook(d, args.n_queries) for d in args.datasets]
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), "load_avg": os.getloadavg()}
    md = to_markdown(enc_rows, cb_rows, meta)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encode_codebook.json").write_text(json.dumps({"meta": meta, "encode": enc_rows, "codebook": cb_rows},
                                                         indent=1))
    (out / "encode_codebook.md").write_text(md)


if __name__ == "__main__":
    main()
