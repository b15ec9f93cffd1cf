"""``persona run`` (:mod:`cli.run`), the main job, end to end on a small real dataset in a subprocess."""

from __future__ import annotations

import json

import pytest

from cli.run import add_parser
from recsys.models import DEFAULT_MODELS
from tests.conftest import needs_mirror, persona


def test_default_models_come_from_the_registry():
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    add_parser(sub)
    assert sub.choices["run"].parse_args([]).models == ",".join(DEFAULT_MODELS)


@needs_mirror
@pytest.mark.timeout(1500)
def test_run_end_to_end_on_a_small_real_dataset(tmp_path):
    proc = persona(
        "run",
        "--quiet",
        "dataset=amazon-scientific",
        "seeds=[0,1]",
        "train.epochs=2",
        f"output_dir={tmp_path / 'runs'}",
        f"reports_dir={tmp_path / 'reports'}",
        f"data.workdir={tmp_path / 'atomic'}",
        timeout=1200,  # a hang guard, not a speed check: encoding + 2 models x 2 seeds take minutes on a busy CPU
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| popularity | 2 |" in proc.stdout and "| sasrec | 2 |" in proc.stdout and "| gru4rec | 2 |" in proc.stdout
    report = json.loads((tmp_path / "reports" / "amazon-scientific" / "base.json").read_text())
    assert len(report["runs"]["sasrec"]) == 2 and "ndcg@10" in report["summary"]["gru4rec"]
    ckpt = tmp_path / "runs" / "amazon-scientific" / "sasrec" / "seed1"
    assert {p.name for p in ckpt.iterdir()} == {"model.pt", "model.yaml", "items.txt", "manifest.json"}
    assert (ckpt.parent / "seed0" / "item-delta.json").is_file()  # the served checkpoint's, taught by all four
    # the device's copy: the LLM item view folded into the item table (ID-only sized, same scores: test_item_side)
    export = persona("export", "dataset=amazon-scientific", "model=sasrec", "seeds=[0,1]",
                     f"output_dir={tmp_path / 'runs'}", f"data.workdir={tmp_path / 'atomic'}")
    assert export.returncode == 0, export.stderr[-2000:]
    assert (ckpt / "device" / "model.pt").stat().st_size < 0.8 * (ckpt / "model.pt").stat().st_size
