"""DDP training (issue 7): 2 gloo processes on 127.0.0.1 equal one process bit for bit (the process
accumulates the same two micro-batches the ranks compute, recsys.loop); a dead rank fails fast and cleanly.

Setup: amazon-scientific with ``max_seq_len=16`` gives 2,949 training windows; with a global batch of 44
the last batch holds one window, so rank 1's shard of it is empty (the zero-loss join path runs too).
Dropout is 0 because the ranks draw different dropout masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.config import load_config
from recsys.distributed import TEST_DIE_ENV
from recsys.train import epoch_order
from tests.conftest import free_port, persona_process

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120  # a hang fails the test instead of the suite


def _overrides(workdir: Path, out: Path) -> list[str]:
    return [
        "dataset=amazon-scientific",
        "data.protocol=order",
        f"data.workdir={workdir}",
        "data.max_seq_len=16",
        "model_params.hidden_size=16",
        "model_params.inner_size=32",
        "model_params.n_layers=1",
        "model_params.item_side=none",  # ID-only: no codebook needed (side views: tests/recsys/test_item_side.py)
        "model_params.dropout=0",
        "train.epochs=2",
        "train.batch_size=44",
        "train.dist_timeout_s=30",
        "seeds=[0]",
        f"output_dir={out}",
    ]


def test_rank_shards_of_a_batch_are_that_batch():
    n, batch, world = 103, 10, 2
    full = epoch_order(n, 7, 3)
    shards = [epoch_order(n, 7, 3, r, world) for r in range(world)]
    for step in range(-(-n // batch)):
        parts = [s[step * batch // world : (step + 1) * batch // world] for s in shards]
        assert sorted(np.concatenate(parts)) == sorted(full[step * batch : (step + 1) * batch])


def test_two_gloo_processes_match_single_process(scientific_split, workdir, tmp_path):
    from recsys.checkpoint import load_checkpoint
    from recsys.experiment import train_seeds

    # one process accumulating the same 2 parts of each global batch that the 2 ranks compute
    single = load_config(overrides=[*_overrides(workdir, tmp_path / "single"), "train.micro_batches=2"])
    (single_dir,) = train_seeds(single, progress=False)

    proc = persona_process(["train", "--nproc", "2", "--quiet", *_overrides(workdir, tmp_path / "ddp")])
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out
    ddp_dir = tmp_path / "ddp" / single_dir.relative_to(tmp_path / "single")
    assert out.count(str(ddp_dir)) == 1  # the path is printed by rank 0 only

    m1, meta1, _ = load_checkpoint(single_dir)
    m2, meta2, _ = load_checkpoint(ddp_dir)
    assert meta2.extra["world_size"] == 2 and "world_size" not in meta1.extra
    assert meta1.extra["best_epoch"] == meta2.extra["best_epoch"]
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for key in s1:  # same operations on the same shapes: bit-identical, whatever the load or threads
        assert torch.equal(s2[key], s1[key]), f"{key}: max |diff| {(s2[key] - s1[key]).abs().max():.3g}"


@pytest.mark.parametrize("launch", ["env", "torchrun"])
def test_dead_rank_fails_fast_without_checkpoint(scientific_split, workdir, tmp_path, launch):
    """Rank 1 exits mid-epoch: the job exits non-zero with a clear error, no hang, no ``model.yaml``."""
    args = ["train", "--quiet", *_overrides(workdir, tmp_path), "train.epochs=1"]
    die = {TEST_DIE_ENV: "1:5"}
    if launch == "torchrun":  # `persona train --nproc 2`: torchrun stops the survivors
        proc = persona_process(["train", "--nproc", "2", *args[1:]], env=die)
        out, _ = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode != 0
        assert "2-process torchrun job failed" in out and "rank      : 1" in out, out
    else:  # a bare process group: rank 0 itself must notice the dead peer
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", **die}
        procs = [persona_process(args, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
        try:
            out0, _ = procs[0].communicate(timeout=TIMEOUT_S)
            procs[1].communicate(timeout=TIMEOUT_S)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        assert procs[1].returncode == 1
        assert procs[0].returncode == 2, out0
        assert "rank 0 of 2: a collective failed" in out0 and "another rank died" in out0, out0
    assert not list(tmp_path.rglob("model.yaml"))
    assert not list(tmp_path.rglob("model.pt"))
