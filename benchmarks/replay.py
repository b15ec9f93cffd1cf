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
forward pass, ``serve.cloud.max_batch=1``: the cloud before :mod:`serving.edit_batcher`), ``cloud-down`` (dead
cloud, the cached bank only; ``cloud-down-ungated`` and ``default-ungated`` with ``serve.device.cache_gate=false``:
every cached prototype's edit served, also those that did not beat the base head on validation), ``slow``
(a link that adds 50 ms each way: answers 100 ms late, past the 50 ms budget) and
``throttled`` (the default config over a link with +20 ms each way and 1 Mbit/s), ``exact-dynamic``
(``exact`` against a cloud whose bank learns from the replayed traffic, ``serve.cloud.dynamic_bank=true``: what
``served-dyn`` measures offline; not in the default set, nor are the ``-ungated`` ones). Those clouds serve the
adapter (``serve.cloud.edit_source=adapter``); ``exact-distilled`` and ``default-distilled`` are ``exact`` and
``default`` against a cloud serving the edit distilled from the teacher (``serve.cloud.edit_source=distilled``, the
teacher the main job's checkpoints: what ``make serve`` serves), beside the offline ``distilled_edit`` of each
row (:meth:`llm_cloud.distill_editor.DistilledEditor.solve`, the item delta included); ``every-event-distilled`` (not
by default) asks it on every event within the default budget; ``cloud-down-distilled``, a dead cloud with that
cloud's bank cached (its item delta, no edit). Then the request-rate
curve: policy ``drift`` against ``random`` (``serve.device.request_policy``)
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
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from recipes.replay import load_rows, mean_std, metrics_of, row_by_row, summarise
from recsys import run_layout
from serving.cloud_app import teacher_dirs
from serving.config import load_app_config
from serving.local_services import free_port, serve_command, start_service, stop
from serving.replay_client import run_condition

ROOT = Path(__file__).resolve().parents[1]

API_KEY = "bench-replay-key"
LONG_BUDGET = ["serve.device.budget_ms=10000"]  # the cloud always answers in time: only the policy decides
SLOW_MS = 100  # the `slow` link's added round trip
CONDITIONS = {
    "exact": {"device": ["serve.device.refresh_every=1", *LONG_BUDGET]},
    "exact-fp32": {"device": ["serve.device.refresh_every=1", "serve.device.edit_encoding=fp32", *LONG_BUDGET]},
    "default": {"device": []},
    "default-ungated": {"device": ["serve.device.cache_gate=false"]},
    "default-unbatched": {"device": [], "cloud": "unbatched"},
    "cloud-down": {"device": [], "cloud": None},
    "cloud-down-ungated": {"device": ["serve.device.cache_gate=false"], "cloud": None},  # every cached edit (no gate)
    "slow": {"device": [], "link": (SLOW_MS / 2e3, None)},  # each way: the round trip SLOW_MS longer
    "throttled": {"device": [], "link": (0.020, 1_000_000)},
    "exact-dynamic": {"device": ["serve.device.refresh_every=1", *LONG_BUDGET], "cloud": "dynamic"},
    "exact-distilled": {"device": ["serve.device.refresh_every=1", *LONG_BUDGET], "cloud": "distilled"},
    "default-distilled": {"device": [], "cloud": "distilled"},
    # asks per event, 50 ms
    "every-event-distilled": {"device": ["serve.device.refresh_every=1"], "cloud": "distilled"},
    "cloud-down-distilled": {"device": [], "cloud": None, "bank": "distilled"},  # the distilled bank's item delta
}
OPTIONAL = ("exact-dynamic", "cloud-down-ungated", "default-ungated", "every-event-distilled")  # not by default
ADAPTER = "serve.cloud.edit_source=adapter"
CLOUDS = {  # cloud processes by kind: the overrides each is started with
    "live": [ADAPTER],
    "unbatched": [ADAPTER, "serve.cloud.max_batch=1"],  # a forward pass per edit request (no edit_batcher batches)
    "dynamic": [ADAPTER, "serve.cloud.dynamic_bank=true"],  # the bank learns from the replayed traffic (served-dyn)
    "distilled": ["serve.cloud.edit_source=distilled"],  # the teacher's distilled edit (default teacher: main job's)
}
DISTILLED = [name for name, spec in CONDITIONS.items() if spec.get("cloud") == "distilled"]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
COMPARED = (("exact", "exact_vs_served", "served"), ("exact-distilled", "exact_distilled_vs_offline", "distilled"))


# ---------------------------------------------------------------- one seed


def seed_rows(args, ckpt: Path, names: list[str]):
    """The replayed rows of this checkpoint with their offline ranks (the distilled edit's when a condition
    serves it; its teacher as the cloud loads it)."""
    cfg = load_app_config(overrides=[f"dataset={args.dataset}", f"data.workdir={ROOT / 'data' / 'atomic'}",
                                     f"output_dir={args.runs}"])  # fmt: skip
    distilled = any(n in DISTILLED for n in names)
    return load_rows(cfg, ckpt, args.users, seed=0, teachers=teacher_dirs(cfg, ckpt) if distilled else None,
                     distill=cfg.serve.cloud.distill)  # fmt: skip


def start_clouds(ckpt: Path, names: list[str], runs: str, tmp: Path) -> dict[str, tuple]:
    """Every cloud kind a condition needs (``live`` always: the dead cloud's cached bank), as (process, port)."""
    wanted = {"live"} | {CONDITIONS[n].get(key, "live") for n in names if n in CONDITIONS for key in ("cloud", "bank")}
    clouds = {}
    try:
        for kind in [k for k in CLOUDS if k in wanted]:
            port = free_port()
            cmd = serve_command("cloud", port, [f"serve.checkpoint={ckpt}", f"serve.api_key={API_KEY}",
                                                f"data.workdir={ROOT / 'data' / 'atomic'}", f"output_dir={runs}",
                                                *CLOUDS[kind]])  # fmt: skip
            clouds[kind] = (start_service(cmd, port, tmp / f"cloud-{kind}.log", "cloud"), port)
    except BaseException:
        for proc, _ in clouds.values():
            stop(proc)
        raise
    return clouds


def snapshots_of(clouds: dict[str, tuple], tmp: Path) -> dict[str, Path]:
    """The bank each cloud serves (``GET /v1/prototypes``), cached on the device before a condition starts."""
    out = {}
    for kind, (_, port) in clouds.items():
        resp = httpx.get(f"http://127.0.0.1:{port}/v1/prototypes", timeout=60, headers=AUTH)
        resp.raise_for_status()
        out[kind] = tmp / f"snapshot-{kind}.json"
        out[kind].write_bytes(resp.content)
    return out


def condition_spec(name: str, curve_extra: list[str]) -> tuple[list[str], str | None, tuple | None, str | None]:
    """(device overrides, cloud kind (None: dead), link (delay, bit rate), bank cached first) of a condition or a
    point of the request-rate curve (``rate-0``, ``<policy>-<rate>``)."""
    if name in CONDITIONS:
        spec = CONDITIONS[name]
        return spec["device"], spec.get("cloud", "live"), spec.get("link"), spec.get("bank")
    policy, rate = ("drift", 0.0) if name == "rate-0" else name.rsplit("-", 1)
    extra = [f"serve.device.request_policy={policy}", f"serve.device.request_rate={rate}", *LONG_BUDGET, *curve_extra]
    return extra, "live", None, None


def one_condition(name: str, ckpt: Path, rows, clouds: dict, snapshots: dict, tmp: Path, args) -> dict:
    """A fresh device with the condition's cloud's bank cached (as after a first sync), replayed."""
    extra, cloud, link, bank = condition_spec(name, args.curve_extra)
    work = tmp / name
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(snapshots[bank or cloud or "live"], work / "prototypes.json")
    device = [f"serve.checkpoint={ckpt}", f"data.workdir={ROOT / 'data' / 'atomic'}",
              f"serve.device.db_path={work / 'events.db'}", f"serve.device.prototype_cache={work / 'prototypes.json'}",
              f"serve.api_key={API_KEY}", f"serve.operator_key={API_KEY}"]  # fmt: skip
    res = run_condition(name, extra, rows, args.lanes, API_KEY, work / "device.log", device,
                        None if cloud is None else clouds[cloud][1], link)  # fmt: skip
    print(f"[{ckpt.name}] {name:>12}: NDCG@10 {res['ndcg@10']:.4f}  adaptation {res['adaptation']}  requests/event "
          f"{res['cloud_requests_per_event']:.3f}  B/edit {res['downlink_bytes_per_edit']}  p50 {res['p50_ms']} ms  "
          f"p99 {res['p99_ms']} ms  non-200 {res['non_200']}  ({res['seconds']} s)", flush=True)  # fmt: skip
    return res


def run_seed(seed: int, args, names: list[str], curve: list[str]) -> dict:
    """Every condition on one seed's checkpoint, its offline reference and the row-by-row comparisons."""
    ckpt = Path(args.runs) / args.dataset / args.model / f"seed{seed}"
    if run_layout.MAIN_ADAPTER not in run_layout.read_manifest(ckpt).adapters:
        raise SystemExit(f"{run_layout.adapter_dir(ckpt)} is missing: run `make run` (or `persona run`) first")
    rows = seed_rows(args, ckpt, names)
    print(f"[seed {seed}] {len(rows.user)} rows, {rows.n_users} users; histories consistent on "
          f"{rows.consistent:.2%} of the later rows", flush=True)  # fmt: skip
    side = yaml.safe_load((ckpt / run_layout.CHECKPOINT_MARK).read_text()).get("model_params", {}).get("item_side")
    offline = {"static": rows.static_rank, "served": rows.served_rank, "distilled": rows.distilled_rank}
    result = {"seed": seed, "dataset": args.dataset, "model": args.model, "conditions": {},
              "base": f"item_side={side}",
              "offline": {k: metrics_of(v) for k, v in offline.items() if v is not None}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="persona-replay-") as tmpdir:
        clouds = start_clouds(ckpt, names, args.runs, Path(tmpdir))
        try:
            snapshots = snapshots_of(clouds, Path(tmpdir))
            for name in names + curve:
                result["conditions"][name] = one_condition(name, ckpt, rows, clouds, snapshots, Path(tmpdir), args)
        finally:
            for proc, _ in clouds.values():
                stop(proc)
    for condition, key, method in COMPARED:
        if condition in result["conditions"]:
            result[key] = row_by_row(result["conditions"][condition]["ranks"], offline[method])
    result["rows"], result["users"], result["consistent"] = len(rows.user), rows.n_users, rows.consistent
    return result


# ---------------------------------------------------------------- reports


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


def offline_lines(per_seed: list[dict], meta: dict) -> list[str]:
    """The report's head: the offline methods on the replayed rows and the row-by-row comparisons."""
    lines = [
        f"# Replay through the live services ({meta['dataset']}, {meta['model']}, {meta['base']}, "
        f"{len(per_seed)} seed(s))", "",
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
    for condition, key, method in COMPARED:
        if condition in per_seed[0]["conditions"]:
            lines += ["", f"Replay `{condition}` against offline `{method}`, row by row: " + "; ".join(
                f"seed {s['seed']}: NDCG@10 difference {s[key]['ndcg_diff']:+.5f} (paired s.e. "
                f"{s[key]['ndcg_diff_se']:.5f}), same target rank on {s[key]['same_rows']:,} of {s[key]['rows']:,} "
                f"rows ({s[key]['same_rank']:.2%})" for s in per_seed) + "."]  # fmt: skip
    return lines


def condition_lines(summary: dict, names: list[str]) -> list[str]:
    """One row per condition (the curve's points apart)."""
    lines = [
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
    return lines


def curve_lines(summary: dict, rates: list[float], stem: str) -> list[str]:
    """The request-rate curve: drift against random at each rate, and the share of the gain each keeps."""
    lines = [
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
    return lines + ["", f"Gain of asking on every event over the cached bank alone: {gain:+.4f} NDCG@10."
                    + (" Share of it kept: " + "; ".join(kept) + "." if kept else "")]  # fmt: skip


def write_reports(
    per_seed: list[dict], names: list[str], rates: list[float], out: Path, meta: dict, stem: str = "replay"
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(per_seed, names)
    slim = [{**s, "conditions": {k: {kk: vv for kk, vv in v.items() if kk != "ranks"}
                                 for k, v in s["conditions"].items()}} for s in per_seed]  # fmt: skip
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "seeds": slim, "summary": summary}, indent=2) + "\n")
    lines = offline_lines(per_seed, meta) + condition_lines(summary, names)
    if rates:
        lines += curve_lines(summary, rates, stem)
    lines += ["", f"- seconds: {meta['seconds']}", f"- command: `{meta['command']}`", ""]
    (out / f"{stem}.md").write_text("\n".join(lines))
    if rates:
        plot_curve(per_seed, rates, out / f"{stem}_rate_curve.png")


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
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
                        "(e.g. serve.device.edit_max_age=5)")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="the runs root holding <dataset>/<model>/seed<N>")
    parser.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    parser.add_argument("--name", default="replay", help="report file stem under --out")
    args = parser.parse_args()
    args.names = [c for c in args.conditions.split(",") if c]
    unknown = sorted(set(args.names) - set(CONDITIONS))
    if unknown:
        parser.error(f"--conditions: unknown {unknown} (known: {', '.join(CONDITIONS)})")
    return args


def plan(args) -> tuple[list[str], list[float], list[str]]:
    """(conditions, curve rates, curve points): ``exact`` is the curve's 100 % point, ``rate-0`` its 0 %."""
    names = list(args.names)
    rates = [] if args.no_curve else sorted(float(r) for r in args.rates.split(","))
    if rates and "exact" not in names:
        names.insert(0, "exact")
    curve = [] if not rates else ["rate-0"] * any(r <= 0 for r in rates) + [
        curve_name(p, r) for r in rates if 0 < r < 1 for p in ("drift", "random")]  # fmt: skip
    return names, rates, curve


def main() -> int:
    args = parse_args()
    names, rates, curve = plan(args)
    t_start = time.perf_counter()
    per_seed = [run_seed(int(s), args, names, curve) for s in args.seeds.split(",")]
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
