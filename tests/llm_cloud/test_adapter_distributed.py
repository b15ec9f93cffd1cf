"""Adapter DDP (issue 7): ``persona adapter --nproc 2`` (2 gloo ranks) equals one process; a dead rank fails cleanly.

ml-100k (always present) with a tiny base; each epoch draws 442 training windows with a global batch of
52 (26 per rank), so the last global batch is partial and both ranks' shards are uneven.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from cli.main import main as persona
from llm_cloud.artifacts import load_adapter
from recsys.distributed import TEST_DIE_ENV
from tests.conftest import persona_process
from tests.llm_cloud.helpers import tiny_base, tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180  # a hang fails the test instead of the suite


def _persona(args: list[str], env: dict | None = None) -> tuple[int, str]:
    proc = persona_process(args, env)
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, out


def test_two_gloo_ranks_train_the_same_adapter_as_one_process(ml100k_split, workdir, tmp_path):
    run_dir = tiny_base(workdir, tmp_path / "single")
    shutil.copytree(tmp_path / "single", tmp_path / "ddp")
    single = [*tiny_overrides(workdir, tmp_path / "single"), "adapter.micro_batches=2"]  # the ranks' 2 parts
    assert persona(["adapter", "--quiet", *single]) == 0

    code, out = _persona(["adapter", "--nproc", "2", "--quiet", *tiny_overrides(workdir, tmp_path / "ddp")])
    assert code == 0, out
    assert out.count("adapter-main") == 1  # rank 0 alone writes and reports
    ddp_dir = tmp_path / "ddp" / run_dir.relative_to(tmp_path / "single")

    a1, meta1 = load_adapter(run_dir / "adapter-main")
    a2, meta2 = load_adapter(ddp_dir / "adapter-main")
    assert meta2["world_size"] == 2 and "world_size" not in meta1
    assert meta1["best_epoch"] == meta2["best_epoch"] and meta1["epochs_run"] == meta2["epochs_run"] == 2
    s1, s2 = a1.state_dict(), a2.state_dict()
    assert s1.keys() == s2.keys()
    moved = [k for k in s1 if "proj_w" in k and s1[k].abs().max() > 0]
    assert moved, "the zero-initialised edit projections must have trained"
    for key in s1:  # same operations on the same shapes: bit-identical, whatever the load or threads
        assert torch.equal(s2[key], s1[key]), f"{key}: max |diff| {(s2[key] - s1[key]).abs().max():.3g}"


def test_dead_adapter_rank_fails_fast_without_artifacts(ml100k_split, workdir, tmp_path):
    run_dir = tiny_base(workdir, tmp_path)
    code, out = _persona(
        ["adapter", "--nproc", "2", "--quiet", *tiny_overrides(workdir, tmp_path)], env={TEST_DIE_ENV: "1:3"}
    )
    assert code != 0
    assert "2-process torchrun job failed" in out, out
    assert not (run_dir / "adapter-main").exists()
    assert not (run_dir / "prototypes.json").exists()
