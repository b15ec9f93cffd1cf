"""``persona evaluate --methods all`` end to end on a tiny real ml-100k setup: train → edit → rank, every
method, the report, then ``--update`` re-evaluating one method on the saved adapters and banks and
``--reuse`` evaluating them into a new report."""

from __future__ import annotations

import json

import numpy as np

from cli.main import main as persona
from codebook import CodebookConfig, SemanticCodebook
from llm_cloud.methods import METHODS
from tests.llm_cloud.helpers import tiny_base, tiny_overrides


def _tiny_codebook(split, runs) -> None:
    """A real FAISS codebook + cached item embeddings (random, 8-d) where `persona codebook` writes them."""
    items = [str(t) for t in split.item_tokens[1:]]
    emb = np.random.default_rng(0).normal(size=(len(items), 8)).astype(np.float32)
    out = SemanticCodebook.build(emb, CodebookConfig(levels=2, max_levels=2, bits=3), item_ids=items).save(
        runs / "ml-100k" / "codebook"
    )
    np.save(out / "item_embeddings.npy", emb, allow_pickle=False)


def test_every_method_then_update_one(ml100k_split, workdir, tmp_path, capsys):
    run_dir = tiny_base(workdir, tmp_path / "runs")
    _tiny_codebook(ml100k_split[1], tmp_path / "runs")  # the user-context methods read it
    # large clip and lr, one epoch over every training window: enough for the edit to beat the tiny base clearly
    args = [*tiny_overrides(workdir, tmp_path / "runs"), f"reports_dir={tmp_path / 'reports'}", "adapter.clip=0.5",
            "adapter.lr=0.01", "adapter.epochs=1", "adapter.samples_per_epoch=null",
            "adapter.batch_size=256"]  # fmt: skip
    assert persona(["evaluate", "--quiet", "--methods", "all", *args]) == 0
    report = tmp_path / "reports" / "ml-100k"
    first = json.loads((report / "adaptation-sasrec.json").read_text())
    assert list(first["runs"]) == METHODS
    ndcg = {m: runs[0]["ndcg@10"] for m, runs in first["runs"].items()}
    assert all(0 < v < 1 for v in ndcg.values())
    # every method also reports the new / seen / long-tail slices of the same rows, with their counts
    rows = {s: first["runs"]["static"][0][f"{s}/rows"] for s in ("new", "seen", "tail")}
    assert rows["new"] + rows["seen"] == 19_811 and 0 < rows["tail"] < rows["seen"]
    assert all(runs[0]["seen/rows"] == rows["seen"] and "tail/hit@10" in runs[0] for runs in first["runs"].values())
    assert "## New and long-tail items" in (report / "adaptation-sasrec.md").read_text()
    # the trained edits rank better than the base (measured: static 0.0194, edit / proto-res / served ≈ 0.0264)
    assert min(ndcg["edit"], ndcg["proto-res"], ndcg["served"]) > 1.15 * ndcg["static"]
    assert ndcg["context"] != ndcg["no-context"] and ndcg["solid"] != ndcg["context"]  # the context hits count
    assert (report / "adaptation-sasrec-ndcg-over-time.png").stat().st_size > 1000
    assert {"adapter-main", "adapter-duet", "bank-finetune", "bank-centre"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "adapter-solid" / "context_items.pt").is_file()  # saved with the context it reads
    assert not (run_dir / "adapter-main" / "context_items.pt").exists()
    extra = json.loads((report / "adaptation-sasrec-extra.json").read_text())
    assert set(extra["ood_auroc"]) == {"proto", "proto-dyn", "served", "served-dyn", "base entropy",
                                       "prototype distance"}
    assert extra["ood_auroc"]["served"] != extra["ood_auroc"]["served-dyn"]  # the counted outcomes move the score
    assert all(0 <= v[0] <= 1 for v in extra["ood_auroc"].values())
    assert extra["timings"][0]["selected"]["finetune"] in (1e-3, 3e-3, 1e-2)  # chosen on validation

    # --update: proto-dyn again on the saved adapter + bank with another refinement rule; the rest is kept
    update = ["evaluate", "--quiet", "--methods", "proto-dyn", "--update"]
    assert persona([*update, *args, "prototypes.refine_rate=0.5"]) == 0
    second = json.loads((report / "adaptation-sasrec.json").read_text())
    assert list(second["runs"]) == METHODS
    assert {m: r for m, r in second["runs"].items() if m != "proto-dyn"} == {
        m: r for m, r in first["runs"].items() if m != "proto-dyn"
    }
    assert second["runs"]["proto-dyn"] != first["runs"]["proto-dyn"]

    # --reuse: the saved adapters, one seed's run at a time, into a new report of just these methods
    fresh = [*args, f"reports_dir={tmp_path / 'fresh'}"]
    assert persona(["evaluate", "--quiet", "--methods", "static,edit,served", "--reuse", *fresh]) == 0
    third = json.loads((tmp_path / "fresh" / "ml-100k" / "adaptation-sasrec.json").read_text())
    assert list(third["runs"]) == ["static", "edit", "served"]
    assert {m: third["runs"][m] for m in third["runs"]} == {m: first["runs"][m] for m in third["runs"]}

    # a saved adapter made with another config is not silently reused
    capsys.readouterr()
    assert persona(["evaluate", "--quiet", "--methods", "edit", "--update", *args, "adapter.window=6"]) == 2
    assert "adapter-main was made with window=4, this run asks for 6" in capsys.readouterr().err
