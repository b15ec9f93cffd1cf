"""serving.demo: the headline bars read from the reports (base models and the live replay of the same dataset), the
page with them inlined safely, and its Content-Security-Policy (the inline script and style by hash)."""

from __future__ import annotations

import base64
import hashlib
import json
import re

from serving.demo import demo_page, headline_results, page_csp


def _write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_the_live_replay_bars_follow_the_base_models_only_for_the_same_dataset(tmp_path):
    _write(tmp_path / "ml-100k" / "base.json", {"summary": {"sasrec": {"ndcg@10": {"mean": 0.05, "std": 0.002}}}})
    replay = {"meta": {"dataset": "ml-100k"}, "summary": {"exact": {"ndcg@10": [0.06, 0.08]}, "cloud-down": {}}}
    _write(tmp_path / "benchmarks" / "replay.json", replay)
    got = headline_results(tmp_path, "ml-100k")
    assert [(b["label"], round(b["value"], 4)) for b in got["bars"]] == [("sasrec (static)", 0.05),
                                                                        ("served live, cloud up", 0.07)]
    assert got["bars"][0]["std"] == 0.002 and str(tmp_path) in got["note"] and got["title"].startswith("ml-100k:")
    replay["meta"]["dataset"] = "ml-latest-small"
    _write(tmp_path / "benchmarks" / "replay.json", replay)
    assert len(headline_results(tmp_path, "ml-100k")["bars"]) == 1  # another dataset's replay is not shown
    assert headline_results(tmp_path / "none", "ml-100k") is None


def test_the_results_are_inlined_so_that_no_text_closes_the_script(tmp_path):
    _write(tmp_path / "x" / "base.json", {"summary": {"</script><b>": {"ndcg@10": {"mean": 0.1, "std": 0.0}}}})
    page = demo_page(tmp_path, "x")
    assert "</script><b>" not in page and '"<\\/script><b> (static)"' in page
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    assert "const RESULTS = {" in script
    assert "const RESULTS = null;" in demo_page(tmp_path, "other")


def test_the_csp_allows_exactly_the_pages_inline_script_and_style(tmp_path):
    page = demo_page(tmp_path, "ml-100k")
    csp = dict(part.split(" ", 1) for part in page_csp(page).split("; "))

    def digest(tag: str) -> str:
        body = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S).group(1)
        return f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"

    assert csp["script-src"] == digest("script") and csp["style-src"] == digest("style")
    assert (csp["default-src"], csp["frame-ancestors"], csp["connect-src"]) == ("'none'", "'none'", "'self'")
    assert page_csp(page.replace("const RESULTS", "const RESULTZ")) != page_csp(page)  # another script, another hash
