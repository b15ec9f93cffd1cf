"""The device's demo page (``GET /``): plain HTML + JS, no external assets, with the headline results.

The page (``serving/static/demo.html``) drives the device's own API: ``/v1/events``, ``/v1/rank``,
``/healthz`` and ``PUT /v1/cloud`` (cut the cloud / bring it back). The results chart is read from the
reports the main job wrote (``<reports_dir>/<dataset>/base.json``, and the live replay's
``<reports_dir>/benchmarks/replay.json`` when it ran on this dataset); without them the page says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib.resources import files
from pathlib import Path

COLORS = {"popularity": "#9ca3af", "sasrec": "#2563eb", "gru4rec": "#7c3aed"}
REPLAY = {"exact": ("served live, cloud up", "#2563eb"), "cloud-down": ("served live, cloud down", "#d97706")}


def headline_results(reports_dir: Path, dataset: str) -> dict | None:
    """Bars of test NDCG@10 (mean over seeds) for the base models and, if measured, the live replay."""
    bars = []
    base = Path(reports_dir) / dataset / "base.json"
    if base.is_file():
        summary = json.loads(base.read_text())["summary"]
        for name, metrics in summary.items():
            m = metrics["ndcg@10"]
            bars.append({"label": f"{name} (static)", "value": m["mean"], "std": m["std"],
                         "color": COLORS.get(name, "#2563eb")})  # fmt: skip
    replay = Path(reports_dir) / "benchmarks" / "replay.json"
    if replay.is_file():
        data = json.loads(replay.read_text())
        if data["meta"]["dataset"] == dataset:
            for name, (label, color) in REPLAY.items():
                values = data["summary"].get(name, {}).get("ndcg@10")
                if values:
                    bars.append({"label": label, "value": sum(values) / len(values), "color": color})
    if not bars:
        return None
    return {"bars": bars, "title": f"{dataset}: test NDCG@10 (RecBole full ranking, mean over seeds)",
            "note": "From the reports of `make run` and benchmarks/replay.py in " + str(reports_dir) + "."}  # fmt: skip


def demo_page(reports_dir: Path, dataset: str) -> str:
    html = files("serving").joinpath("static/demo.html").read_text(encoding="utf-8")
    results = json.dumps(headline_results(reports_dir, dataset)).replace("</", "<\\/")
    return html.replace("/*RESULTS*/null", results, 1)


def page_csp(html: str) -> str:
    """The page's Content-Security-Policy: only its own inline script and style (by hash), API calls to its own
    origin, no framing (its "cut the cloud" cannot be clickjacked), no forms, no base URL."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
            "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
