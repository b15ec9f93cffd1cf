"""``cli.launch``: a command relaunched as N DDP ranks runs this package's ``persona`` (``-m cli.main``) under
torchrun with the same options and overrides (the ranks at work: ``tests/llm_cloud/test_adapter_distributed.py``)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from cli import CliError
from cli.launch import resolve_nproc, torchrun_self


def test_resolve_nproc():
    assert resolve_nproc(None, 3) == 3 and resolve_nproc(2, 3) == 2
    with pytest.raises(CliError, match="--nproc must be >= 1, got 0"):
        resolve_nproc(0, 3)


def test_torchrun_runs_this_cli(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 7)
    args = argparse.Namespace(config="my.yaml", quiet=True, verbose=True, overrides=["seeds=[0]"])
    assert torchrun_self("train", args, 2, [*args.overrides, "model=gru4rec"]) == 7
    (cmd,) = calls
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert cmd[cmd.index("-m", 3):] == ["-m", "cli.main", "-v", "train", "--config", "my.yaml", "--quiet", "seeds=[0]",
                                        "model=gru4rec"]
    assert "persona train: error: 2-process torchrun job failed (exit code 7)" in capsys.readouterr().err
