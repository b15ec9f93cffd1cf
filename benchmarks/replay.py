"""Replay a dataset's test period through the live device and cloud services, and score what they serve.

The main job's artifacts (``make run``: ``runs/<dataset>/sasrec/seed<N>`` with ``adapter-main`` and its
bank) are served by real processes on 127.0.0.1: ``persona serve --role cloud`` and, per condition, a
fresh ``persona serve --role device`` whose cloud URL points at a link emulator in this process (an
asyncio TCP relay that counts the bytes each way and can add latency and a shared bandwidth cap).

A seeded share of the test users is replayed. Each user's history before its first test target is
stored with ``POST /v1/events``; then the test rows stream in time order over ``--lanes`` concurrent
connections (a user's rows stay in order on one lane): ``POST /v1/rank`` (k=10, the user's stored
events, nothing excluded, as RecBole's full ranking) is scored against the row's target (NDCG@10,
HR@10, MRR@10), then the target is posted as the user's next event. Offline, the same rows are scored
with the ``served`` method (:func:`llm_cloud.editor.served_edit`, the function the cloud serves) and the
static base model, so the replay with the cloud always answering can be compared row by row.

Conditions: ``exact`` (a cloud edit for every new event, budget 10 s: what ``served`` measures),
``exact-fp32`` (the same with dense fp32 edits on the wire instead of codes), ``default`` (the shipped
serve config), ``default-unbatched`` (the same against a cloud that answers each edit request in its own
forward pass, ``serve.max_batch=1``: the cloud before :mod:`serving.edit_batcher`), ``cloud-down`` (dead
cloud, the cached bank only; ``cloud-down-ungated`` and ``default-ungated`` with ``serve.cache_gate=false``:
every cached prototype's edit served, also those that did not beat the base head on validation), ``slow``
(a link that adds 50 ms each way: answers 100 ms late, past the 50 ms budget) and
``throttled`` (the default config over a link with +20 ms each way and 1 Mbit/s), ``exact-dynamic``
(``exact`` against a cloud whose bank learns from the replayed traffic, ``serve.dynamic_bank=true``: what
``served-dyn`` measures offline; not in the default set, nor are the ``-ungated`` ones). Those clouds serve the
adapter (``cloud.edit_source=adapter``); ``exact-distilled`` and ``default-distilled`` are ``exact`` and
``default`` against a cloud serving the edit distilled from the teacher (``cloud.edit_source=distilled``, the
teacher the main job's checkpoints: what ``make serve`` serves), beside the offline ``distilled_edit`` of each
row (:meth:`llm_cloud.distill_editor.DistilledEditor.solve`, the item delta included); ``every-event-distilled`` (not
by default) asks it on every event within the default budget; ``cloud-down-distilled``, a dead cloud with that
cloud's bank cached (its item delta, no edit). Then the request-rate
curve: policy ``drift`` against ``random`` (``serve.request_policy``)
at each ``--rates`` value, budget 10 s so that only the policy decides what is served (rate 0 is the
cached bank alone; rate 1 is ``exact``). Each condition reports the adaptation-source shares, cloud
edit requests per event, downlink bytes per edit response (measured on the relay: everything the
device received from the cloud, headers included, over the edit responses it got), p50/p99 rank
latency and non-200 answers. Results: ``reports/benchmarks/replay.{json,md}`` and the curve
``reports/benchmarks/replay_rate_curve.png``.

    python benchmarks/replay.py [--dataset ml-100k] [--model sasrec] [--seeds 0,1,2] [--users 0.25]
                                [--lanes 8] [--rates 0,0.05,0.1,0.2,0.5,1] [--conditions ...] [--no-curve]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
import yaml
from serve_load import free_port, percentile, start_service, stop
from tqdm import tqdm

from llm_cloud.adapter import edited_logits
from llm_cloud.distill_editor import DistilledEditor
from llm_cloud.editor import AdapterEditor, load_editor, served_edit
from recsys import metrics, run_layout
from recsys.experiment import load_dataset_split
from serving.cloud_app import teacher_dirs
from serving.config import load_app_config
from serving.metrics import read_samples

ROOT = Path(__file__).resolve().parents[1]

API_KEY = "bench-replay-key"
K = 10
LONG_BUDGET = ["serve.budget_ms=10000"]  # the cloud always answers in time: only the policy decides
SLOW_MS = 100  # the `slow` link's added round trip
CONDITIONS = {
    "exact": {"device": ["serve.refresh_every=1", *LONG_BUDGET]},
    "exact-fp32": {"device": ["serve.refresh_every=1", "serve.edit_encoding=fp32", *LONG_BUDGET]},
    "default": {"device": []},
    "default-ungated": {"device": ["serve.cache_gate=false"]},
    "default-unbatched": {"device": [], "cloud": "unbatched"},
    "cloud-down": {"device": [], "cloud": None},
    "cloud-down-ungated": {"device": ["serve.cache_gate=false"], "cloud": None},  # every cached edit (no gate)
    "slow": {"device": [], "link": (SLOW_MS / 2e3, None)},  # each way: the round trip SLOW_MS longer
    "throttled": {"device": [], "link": (0.020, 1_000_000)},
    "exact-dynamic": {"device": ["serve.refresh_every=1", *LONG_BUDGET], "cloud": "dynamic"},
    "exact-distilled": {"device": ["serve.refresh_every=1", *LONG_BUDGET], "cloud": "distilled"},
    "default-distilled": {"device": [], "cloud": "distilled"},
    "every-event-distilled": {"device": ["serve.refresh_every=1"], "cloud": "distilled"},  # asks per event, 50 ms
    "cloud-down-distilled": {"device": [], "cloud": None, "bank": "distilled"},  # the distilled bank's item delta
}
OPTIONAL = ("exact-dynamic", "cloud-down-ungated", "default-ungated", "every-event-distilled")  # not by default
ADAPTER = "cloud.edit_source=adapter"
CLOUDS = {  # cloud processes by kind: the overrides each is started with
    "live": [ADAPTER],
    "unbatched": [ADAPTER, "serve.max_batch=1"],  # a forward pass per edit request (no serving.edit_batcher batches)
    "dynamic": [ADAPTER, "serve.dynamic_bank=true"],  # the bank learns from the replayed traffic (served-dyn)
    "distilled": ["cloud.edit_source=distilled"],  # the teacher's distilled edit (default teacher: the main job's)
}
DISTILLED = [name for name, spec in CONDITIONS.items() if spec.get("cloud") == "distilled"]


# ---------------------------------------------------------------- data and the offline reference


@dataclass
class Rows:
    """The replayed test rows, in time order: user token, history tokens (first row per user), target."""

    user: list[str]
    target: list[str]
    history: dict[str, list[str]]  # user → items stored before its first replayed row
    static_rank: np.ndarray  # offline rank of each target (0 = top) by the static base model
    served_rank: np.ndarray  # … by the ``served`` method (what the cloud serves)
    distilled_rank: np.ndarray | None  # … by the base model with the row's offline distilled edit (when asked)
    dataset: str
    n_users: int
    consistent: float  # share of rows whose history is the previous row's history + target


def load_rows(dataset: str, ckpt: Path, share: float, seed: int, runs: Path, distilled: bool = False) -> Rows:
    cfg = load_app_config(overrides=[f"dataset={dataset}", f"data.workdir={ROOT / 'data' / 'atomic'}",
                                     f"output_dir={runs}"])  # fmt: skip
    split = load_dataset_split(cfg)
    test = split.eval_rows("test")
    uid = test["user_id"].numpy()
    users = np.unique(uid)
    chosen = set(random.Random(seed).sample(sorted(users.tolist()), max(1, round(share * len(users)))))
    idx = np.array([i for i in range(len(uid)) if uid[i] in chosen])
    ts = test["timestamp"].numpy()[idx]
    idx = idx[np.argsort(ts, kind="stable")]  # time order; a user's rows keep their order
    seq, length, target = test["item_id_list"][idx], test["item_length"][idx], test["item_id"][idx]
    tokens = [str(t) for t in split.item_tokens]

    history: dict[str, list[str]] = {}
    last: dict[str, list[int]] = {}
    consistent = 0
    users_of = [str(int(u)) for u in uid[idx]]
    for r, u in enumerate(users_of):
        items = seq[r, : length[r]].tolist()
        if u not in history:
            history[u] = [tokens[i] for i in items]
        elif last[u][-len(items) :] == items:
            consistent += 1
        last[u] = items + [int(target[r])]

    editor = load_editor(ckpt, 0, run_layout.adapter_dir(ckpt))
    if not isinstance(editor, AdapterEditor):
        raise SystemExit(f"{run_layout.adapter_dir(ckpt)} has no trained adapter + bank: run `make run` first")
    base = editor.base
    static_rank, served_rank = [], []
    with torch.inference_mode():
        for lo in range(0, len(idx), 512):
            s, n, t = seq[lo : lo + 512], length[lo : lo + 512], target[lo : lo + 512]
            logits = base.score(s, n)
            static_rank.append(_ranks(logits, t))
            out = served_edit(base, editor.adapter, editor.bank, editor.code_table, s, n, editor.context)
            served_rank.append(_ranks(edited_logits(base, out.state, out.edit), t))
    n_rest = len(idx) - len(history)
    distilled_rank = distilled_ranks(cfg, ckpt, base, seq, length, target) if distilled else None
    return Rows(
        users_of, [tokens[int(i)] for i in target], history, np.concatenate(static_rank), np.concatenate(served_rank),
        distilled_rank, dataset, len(history), consistent / n_rest if n_rest else 1.0,
    )  # fmt: skip


def distilled_ranks(cfg, ckpt: Path, base, seq: torch.Tensor, length: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Each row's target rank with its offline distilled edit as the served cloud solves it
    (:class:`DistilledEditor`: the teacher it loads, ``cloud.teacher`` or the main job's checkpoints, and the
    checkpoint's item delta, which the device scores with once it holds the bank; 512 rows at a time)."""
    editor = DistilledEditor.load(ckpt, teacher_dirs(cfg, ckpt), cfg.cloud.distill)
    out = []
    for lo in tqdm(range(0, len(seq), 512), desc="offline distilled edits", leave=False):
        s, n, t = seq[lo : lo + 512], length[lo : lo + 512], target[lo : lo + 512]
        edit = editor.solve(s, n)
        with torch.no_grad():
            out.append(_ranks(base.logits(base.head(base.user_state(s, n), edit), editor.items), t))
    return np.concatenate(out)


def _find(tree, key: str):
    """The first value of ``key`` anywhere in a nested YAML mapping (None when absent)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            if (found := _find(value, key)) is not None:
                return found
    return None


def _ranks(logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    logits = logits.clone()
    logits[:, 0] = -torch.inf  # padding
    return metrics.target_rank(logits, target).numpy()


def metrics_of(ranks: np.ndarray) -> dict:
    return {key: float(v.mean()) for key, v in metrics.per_ranks(torch.as_tensor(ranks), K).items()}


# ---------------------------------------------------------------- the link between device and cloud


class Link:
    """TCP relay 127.0.0.1:port → the cloud: counts bytes each way, adds ``delay_s`` per direction and a
    shared ``bits_per_s`` cap per direction (``None``: none)."""

    def __init__(self, upstream: int, delay_s: float = 0.0, bits_per_s: float | None = None):
        self.upstream, self.delay_s, self.bits_per_s = upstream, delay_s, bits_per_s
        self.bytes = {"up": 0, "down": 0}
        self._free_at = {"up": 0.0, "down": 0.0}
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.server.close()

    async def _handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, "up"), self._pipe(up_reader, writer, "down"))

    async def _pipe(self, reader, writer, direction: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(65536):
                self.bytes[direction] += len(data)
                if self.bits_per_s:
                    start = max(loop.time(), self._free_at[direction])
                    self._free_at[direction] = start + len(data) * 8 / self.bits_per_s
                    await asyncio.sleep(self._free_at[direction] - loop.time())
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


# ---------------------------------------------------------------- one replay


@dataclass
class Outcome:
    ranks: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    errors: int = 0


async def replay(port: int, rows: Rows, lanes: int, label: str) -> Outcome:
    url = f"http://127.0.0.1:{port}"
    out = Outcome()
    ranks: list[int | None] = [None] * len(rows.user)
    kinds: list[str | None] = [None] * len(rows.user)
    limits = httpx.Limits(max_connections=lanes + 2, max_keepalive_connections=lanes + 2)
    headers = {"Authorization": f"Bearer {API_KEY}"}  # the operator key: the replay writes and ranks for every user
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers) as client:
        for u, items in rows.history.items():  # history before the test period, in order (older timestamps)
            events = [{"event_id": f"{u}-h{i}", "user_id": u, "item_id": t, "timestamp": i + 1}
                      for i, t in enumerate(items)]  # fmt: skip
            resp = await client.post("/v1/events", json={"events": events})
            resp.raise_for_status()
        lane_of = {u: n % lanes for n, u in enumerate(rows.history)}
        queues = [[r for r in range(len(rows.user)) if lane_of[rows.user[r]] == n] for n in range(lanes)]
        bar = tqdm(total=len(rows.user), desc=label, leave=False, mininterval=1.0)

        async def lane(queue: list[int]) -> None:
            for r in queue:
                u = rows.user[r]
                t0 = time.perf_counter()
                resp = await client.post("/v1/rank", json={"user_id": u, "k": K, "exclude_seen": False})
                out.latency.append(time.perf_counter() - t0)
                if resp.status_code != 200:
                    out.errors += 1
                    ranks[r], kinds[r] = K, "error"
                else:
                    body = resp.json()
                    served = [it["item_id"] for it in body["items"]]
                    ranks[r] = served.index(rows.target[r]) if rows.target[r] in served else K
                    kinds[r] = body["adaptation"]
                event = {"event_id": f"{u}-t{r}", "user_id": u, "item_id": rows.target[r], "timestamp": 1e9 + r}
                (await client.post("/v1/events", json={"events": [event]})).raise_for_status()
                bar.update()

        await asyncio.gather(*(lane(q) for q in queues))
        bar.close()
    out.ranks, out.kinds = ranks, kinds
    return out


def device_metrics(port: int) -> dict:
    """Edit requests by outcome, fallbacks by reason and policy decisions from the device's ``/metrics``."""
    auth = {"Authorization": f"Bearer {API_KEY}"}
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30, headers=auth).text
    found: dict[str, float] = {}
    for name, labels, value in read_samples(text):
        if name == "persona_cloud_rtt_seconds_count" and labels.get("endpoint") == "edits":
            found[f"edits:{labels['outcome']}"] = found.get(f"edits:{labels['outcome']}", 0) + value
        elif name in ("persona_cloud_fallback_total", "persona_cloud_ask_total"):
            found[f"{name.split('_')[2]}:{next(iter(labels.values()))}"] = value
    return found


def run_condition(name: str, extra: list[str], cloud_port: int | None, link_cfg, ckpt: Path, rows: Rows,
                  snapshot: Path, tmp: Path, lanes: int) -> dict:  # fmt: skip
    work = tmp / name
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(snapshot, work / "prototypes.json")  # the device has cached the bank (as after a first sync)

    async def go() -> tuple[Outcome, dict, dict]:
        link = None
        if cloud_port is not None:
            link = Link(cloud_port, *(link_cfg or (0.0, None)))
            await link.start()
        cloud_url = f"http://127.0.0.1:{link.port if link else free_port()}"  # a free port: nothing listens
        port = free_port()
        cmd = [
            sys.executable, "-m", "serving.cli", "serve", "--role", "device", "--port", str(port),
            f"serve.checkpoint={ckpt}", f"data.workdir={ROOT / 'data' / 'atomic'}",
            f"serve.db_path={work / 'events.db'}", f"serve.prototype_cache={work / 'prototypes.json'}",
            f"serve.cloud_url={cloud_url}", f"serve.api_key={API_KEY}", f"serve.operator_key={API_KEY}",
            "serve.http.access_log=false", *extra,
        ]  # fmt: skip
        proc = await asyncio.to_thread(start_service, cmd, port, work / "device.log", "device")
        try:
            outcome = await replay(port, rows, lanes, name)
            found = await asyncio.to_thread(device_metrics, port)
        finally:
            await asyncio.to_thread(stop, proc)
            if link:
                await link.close()
        return outcome, found, dict(link.bytes) if link else {"up": 0, "down": 0}

    t0 = time.perf_counter()
    outcome, found, wire = asyncio.run(go())
    n = len(outcome.ranks)
    edits = sum(v for k, v in found.items() if k.startswith("edits:"))
    edits_ok = found.get("edits:ok", 0.0)
    shares = {kind: outcome.kinds.count(kind) / n for kind in ("cloud-edit", "prototype-cache", "base", "error")}
    return {
        "condition": name,
        "overrides": extra,
        **metrics_of(np.array(outcome.ranks)),
        "adaptation": {k: round(v, 4) for k, v in shares.items()},
        "cloud_requests_per_event": round(edits / n, 4),
        "edit_requests": {k.split(":")[1]: v for k, v in found.items() if k.startswith("edits:")},
        "fallbacks": {k.split(":")[1]: v for k, v in found.items() if k.startswith("fallback:")},
        "policy": {k.split(":")[1]: v for k, v in found.items() if k.startswith("ask:")},
        "downlink_bytes_per_edit": round(wire["down"] / edits_ok, 1) if edits_ok else None,
        "uplink_bytes_per_edit": round(wire["up"] / edits_ok, 1) if edits_ok else None,
        "p50_ms": round(percentile(outcome.latency, 50) * 1e3, 2),
        "p99_ms": round(percentile(outcome.latency, 99) * 1e3, 2),
        "non_200": outcome.errors,
        "rows": n,
        "seconds": round(time.perf_counter() - t0, 1),
        "ranks": outcome.ranks,
    }


# ---------------------------------------------------------------- reports


def row_by_row(replayed: list[int], offline: np.ndarray) -> dict:
    """A replayed condition against its offline method on the same rows: NDCG@10 difference and the share of
    rows whose target got the same rank (within the top 10; ``K`` = outside)."""
    replayed, offline = np.array(replayed), np.minimum(offline, K)
    d = (metrics.ndcg(torch.as_tensor(replayed), K) - metrics.ndcg(torch.as_tensor(offline), K)).numpy()
    return {"ndcg_diff": float(d.mean()), "ndcg_diff_se": float(d.std(ddof=1) / math.sqrt(len(d))),
            "same_rank": float((replayed == offline).mean()), "same_rows": int((replayed == offline).sum()),
            "rows": len(d)}  # fmt: skip


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def summarise(per_seed: list[dict], names: list[str]) -> dict:
    """Mean ± std over seeds of each condition's numbers."""
    out = {}
    for name in names:
        runs = [s["conditions"][name] for s in per_seed if name in s["conditions"]]
        out[name] = {
            key: [r[key] for r in runs]
            for key in ("ndcg@10", "hit@10", "mrr@10", "cloud_requests_per_event", "downlink_bytes_per_edit",
                        "p50_ms", "p99_ms", "non_200")
        }  # fmt: skip
        out[name]["adaptation"] = {k: [r["adaptation"][k] for r in runs] for k in runs[0]["adaptation"]}
    return out


def plot_curve(per_seed: list[dict], rates: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, style in (("drift", "o-"), ("random", "s--")):
        means, stds = [], []
        for rate in rates:
            vals = [s["conditions"][curve_name(policy, rate)]["ndcg@10"] for s in per_seed]
            means.append(statistics.mean(vals))
            stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        ax.errorbar([100 * r for r in rates], means, yerr=stds, fmt=style, capsize=3, label=policy)
    static = statistics.mean(s["offline"]["static"]["ndcg@10"] for s in per_seed)
    ax.axhline(static, color="grey", lw=0.8, ls=":", label="static base (offline)")
    ax.set_xscale("symlog", linthresh=5)
    ax.set_xticks([100 * r for r in rates], [f"{100 * r:g}" for r in rates])
    ax.set_xlabel("events that ask the cloud for an edit (%)")
    ax.set_ylabel("replay NDCG@10")
    ax.set_title(f"{per_seed[0]['dataset']} {per_seed[0]['model']}: request policy, {len(per_seed)} seed(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curve_name(policy: str, rate: float) -> str:
    if rate <= 0:
        return "rate-0"
    if rate >= 1:
        return "exact"
    return f"{policy}-{rate:g}"


def write_reports(
    per_seed: list[dict], names: list[str], rates: list[float], out: Path, meta: dict, stem: str = "replay"
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(per_seed, names)
    slim = [{**s, "conditions": {k: {kk: vv for kk, vv in v.items() if kk != "ranks"}
                                 for k, v in s["conditions"].items()}} for s in per_seed]  # fmt: skip
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "seeds": slim, "summary": summary}, indent=2) + "\n")
    seeds = len(per_seed)
    lines = [
        f"# Replay through the live services ({meta['dataset']}, {meta['model']}, {meta['base']}, {seeds} seed(s))",
        "",
        f"{meta['rows']} test rows of {meta['users']} users per seed ({meta['share']:.0%} of the test users), "
        f"{meta['lanes']} concurrent lanes, k=10, nothing excluded (as RecBole's full ranking). Mean ± std over "
        "seeds (the seed-`N` checkpoint, adapter and bank; the same users).", "",
        "## Offline reference on the same rows", "",
        "| method | NDCG@10 | HR@10 | MRR@10 |", "|---|---|---|---|",
    ]  # fmt: skip
    for method in [m for m in ("static", "served", "distilled") if m in per_seed[0]["offline"]]:
        vals = [s["offline"][method] for s in per_seed]
        cells = [mean_std([v[m] for v in vals]) for m in ("ndcg@10", "hit@10", "mrr@10")]
        lines.append(f"| {method} (offline) | " + " | ".join(cells) + " |")
    for condition, key, method in (("exact", "exact_vs_served", "served"),
                                   ("exact-distilled", "exact_distilled_vs_offline", "distilled")):  # fmt: skip
        if condition in per_seed[0]["conditions"]:
            lines += ["", f"Replay `{condition}` against offline `{method}`, row by row: " + "; ".join(
                f"seed {s['seed']}: NDCG@10 difference {s[key]['ndcg_diff']:+.5f} (paired s.e. "
                f"{s[key]['ndcg_diff_se']:.5f}), same target rank on {s[key]['same_rows']:,} of {s[key]['rows']:,} "
                f"rows ({s[key]['same_rank']:.2%})" for s in per_seed) + "."]  # fmt: skip
    lines += [
        "", "## Conditions", "",
        "| condition | NDCG@10 | HR@10 | cloud-edit | prototype-cache | base | cloud requests / event "
        "| downlink B / edit | p50 ms | p99 ms | non-200 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name in names:
        if name.startswith(("drift-", "random-")) or name == "rate-0":
            continue
        s = summary[name]
        bytes_ = [b for b in s["downlink_bytes_per_edit"] if b is not None]
        shares = (statistics.mean(s["adaptation"][k]) for k in ("cloud-edit", "prototype-cache", "base"))
        lines.append(
            f"| {name} | {mean_std(s['ndcg@10'])} | {mean_std(s['hit@10'])} | "
            + " | ".join(f"{v:.1%}" for v in shares)
            + f" | {statistics.mean(s['cloud_requests_per_event']):.3f} | "
            + (f"{statistics.mean(bytes_):,.0f}" if bytes_ else "–")
            + f" | {statistics.mean(s['p50_ms']):.1f} | {statistics.mean(s['p99_ms']):.1f} | {sum(s['non_200'])} |"
        )  # fmt: skip
    if rates:
        lines += [
            "", "## Request policy: NDCG@10 against the share of events that ask the cloud", "",
            f"![request-rate curve]({stem}_rate_curve.png)", "",
            "| target rate | drift NDCG@10 | drift asked | random NDCG@10 | random asked |", "|---|---|---|---|---|",
        ]  # fmt: skip
        for rate in rates:
            row = [f"{rate:.0%}"]
            for policy in ("drift", "random"):
                s = summary[curve_name(policy, rate)]
                row += [mean_std(s["ndcg@10"]), f"{statistics.mean(s['cloud_requests_per_event']):.3f}"]
            lines.append("| " + " | ".join(row) + " |")
        lo = statistics.mean(summary["rate-0"]["ndcg@10"])
        gain = statistics.mean(summary["exact"]["ndcg@10"]) - lo
        kept = [f"{p} {r:.0%}: {(statistics.mean(summary[curve_name(p, r)]['ndcg@10']) - lo) / gain:.0%}"
                for p in ("drift", "random") for r in rates if 0 < r < 1] if gain else []  # fmt: skip
        lines += ["", f"Gain of asking on every event over the cached bank alone: {gain:+.4f} NDCG@10."
                  + (" Share of it kept: " + "; ".join(kept) + "." if kept else "")]  # fmt: skip
    lines += ["", f"- seconds: {meta['seconds']}", f"- command: `{meta['command']}`", ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    if rates:
        plot_curve(per_seed, rates, out / f"{stem}_rate_curve.png")


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--users", type=float, default=0.25, help="share of the test users replayed")
    parser.add_argument("--lanes", type=int, default=8)
    parser.add_argument("--rates", default="0,0.05,0.1,0.2,0.5,1")
    parser.add_argument("--conditions", default=",".join(c for c in CONDITIONS if c not in OPTIONAL))
    parser.add_argument("--no-curve", action="store_true")
    parser.add_argument("--curve-extra", nargs="*", default=[], help="device overrides for every curve point "
                        "(e.g. serve.edit_max_age=5)")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="the runs root holding <dataset>/<model>/seed<N>")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    parser.add_argument("--name", default="replay", help="report file stem under --out")
    args = parser.parse_args()
    names = [c for c in args.conditions.split(",") if c]
    unknown = sorted(set(names) - set(CONDITIONS))
    if unknown:
        parser.error(f"--conditions: unknown {unknown} (known: {', '.join(CONDITIONS)})")
    rates = [] if args.no_curve else sorted(float(r) for r in args.rates.split(","))
    if rates and "exact" not in names:
        names.insert(0, "exact")  # the curve's 100 % point
    curve = [] if not rates else ["rate-0"] * any(r <= 0 for r in rates) + [
        curve_name(p, r) for r in rates if 0 < r < 1 for p in ("drift", "random")]  # fmt: skip
    t_start = time.perf_counter()
    per_seed = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        ckpt = Path(args.runs) / args.dataset / args.model / f"seed{seed}"
        if run_layout.MAIN_ADAPTER not in run_layout.read_manifest(ckpt).adapters:
            raise SystemExit(f"{run_layout.adapter_dir(ckpt)} is missing: run `make run` (or `persona run`) first")
        rows = load_rows(args.dataset, ckpt, args.users, seed=0, runs=Path(args.runs),
                         distilled=any(n in DISTILLED for n in names))  # fmt: skip
        print(f"[seed {seed}] {len(rows.user)} rows, {rows.n_users} users; histories consistent on "
              f"{rows.consistent:.2%} of the later rows", flush=True)  # fmt: skip
        side = yaml.safe_load((ckpt / run_layout.CHECKPOINT_MARK).read_text())
        result = {"seed": seed, "dataset": args.dataset, "model": args.model, "conditions": {},
                  "base": f"item_side={_find(side, 'item_side')}",
                  "offline": {"static": metrics_of(rows.static_rank), "served": metrics_of(rows.served_rank)}}
        if rows.distilled_rank is not None:
            result["offline"]["distilled"] = metrics_of(rows.distilled_rank)
        with tempfile.TemporaryDirectory(prefix="persona-replay-") as tmpdir:
            tmp = Path(tmpdir)
            clouds = {}
            wanted = {"live"} | {CONDITIONS[n].get(key, "live") for n in names if n in CONDITIONS
                                 for key in ("cloud", "bank")}  # fmt: skip
            for kind, extra in CLOUDS.items():
                if kind not in wanted:
                    continue
                port = free_port()
                cmd = [
                    sys.executable, "-m", "serving.cli", "serve", "--role", "cloud", "--cloud-port", str(port),
                    f"serve.checkpoint={ckpt}", f"serve.api_key={API_KEY}", f"data.workdir={ROOT / 'data' / 'atomic'}",
                    f"output_dir={args.runs}", "serve.http.access_log=false", *extra,
                ]  # fmt: skip
                clouds[kind] = (start_service(cmd, port, tmp / f"cloud-{kind}.log", "cloud"), port)
            try:
                snapshots = {}  # the bank each cloud serves, cached on the device first (a dead cloud: live's)
                for kind, (_, port) in clouds.items():
                    snapshots[kind] = tmp / f"snapshot-{kind}.json"
                    resp = httpx.get(f"http://127.0.0.1:{port}/v1/prototypes", timeout=60,
                                     headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
                    resp.raise_for_status()
                    snapshots[kind].write_bytes(resp.content)
                for name in names + curve:
                    if name in CONDITIONS:
                        spec = CONDITIONS[name]
                        extra, cloud, link_cfg = spec["device"], spec.get("cloud", "live"), spec.get("link")
                        bank = spec.get("bank")  # the bank cached first, where not the condition's cloud's
                    else:
                        policy, rate = ("drift", 0.0) if name == "rate-0" else name.rsplit("-", 1)
                        extra = [f"serve.request_policy={policy}", f"serve.request_rate={rate}", *LONG_BUDGET,
                                 *args.curve_extra]
                        cloud, link_cfg, bank = "live", None, None
                    cloud_port = None if cloud is None else clouds[cloud][1]
                    snapshot = snapshots[bank or cloud or "live"]
                    res = run_condition(name, extra, cloud_port, link_cfg, ckpt, rows, snapshot, tmp, args.lanes)
                    result["conditions"][name] = res
                    print(f"[seed {seed}] {name:>12}: NDCG@10 {res['ndcg@10']:.4f}  adaptation {res['adaptation']}  "
                          f"requests/event {res['cloud_requests_per_event']:.3f}  B/edit {res['downlink_bytes_per_edit']}  "  # noqa: E501
                          f"p50 {res['p50_ms']} ms  p99 {res['p99_ms']} ms  non-200 {res['non_200']}  "
                          f"({res['seconds']} s)", flush=True)  # fmt: skip
            finally:
                for proc, _ in clouds.values():
                    stop(proc)
        if "exact" in result["conditions"]:
            result["exact_vs_served"] = row_by_row(result["conditions"]["exact"]["ranks"], rows.served_rank)
        if "exact-distilled" in result["conditions"]:
            result["exact_distilled_vs_offline"] = row_by_row(result["conditions"]["exact-distilled"]["ranks"],
                                                              rows.distilled_rank)  # fmt: skip
        result["rows"], result["users"], result["consistent"] = len(rows.user), rows.n_users, rows.consistent
        per_seed.append(result)
    meta = {
        "dataset": args.dataset, "model": args.model, "share": args.users, "lanes": args.lanes,
        "base": per_seed[0]["base"],
        "rows": per_seed[0]["rows"], "users": per_seed[0]["users"], "seconds": round(time.perf_counter() - t_start, 1),
        "command": "python benchmarks/replay.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip
    write_reports(per_seed, names + curve, rates, Path(args.out), meta, args.name)
    print((Path(args.out) / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
