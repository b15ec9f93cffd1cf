"""``persona adapter`` (:mod:`cli.adapter`): its one-line errors and its summary (the adapter it trains, on one
process and on two: ``tests/llm_cloud/test_adapter_distributed.py``)."""

from __future__ import annotations

from pathlib import Path

from cli.adapter import print_serving
from cli.main import main
from recipes.adaptation import ServingArtifacts


def test_adapter_without_checkpoint_says_what_to_run(ml100k_split, workdir, tmp_path, capsys):
    assert main(["adapter", "--quiet", f"data.workdir={workdir}", f"output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("persona adapter: error: "), err
    assert "run `persona train` (and `persona codebook`) first" in err[0]


def test_nproc_below_one_is_refused(capsys):
    assert main(["adapter", "--nproc", "0"]) == 2
    assert "persona adapter: error: --nproc must be >= 1, got 0" in capsys.readouterr().err


def test_one_line_per_seed(capsys):
    run = Path("runs/x/sasrec/seed3")
    print_serving([ServingArtifacts(3, run, run / "adapter-main", run / "bank-finetune", run / "prototypes.json", 64)])
    assert capsys.readouterr().out == f"seed 3: {run / 'adapter-main'}, {run / 'bank-finetune'} (64 prototypes), " \
                                      f"{run / 'prototypes.json'}\n"
