"""Shared fixtures: real data (the ../shared mirror or the ml-100k copy inside recbole), small configs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from recsys.config import load_config  # noqa: E402  (recsys's own loader: the splits need no other section)
from recsys.datasets.registry import default_mirror  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open while chosen, so they cannot repeat)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def persona_process(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """``python -m serving.cli ARGS`` in the repo root, stdout and stderr merged (text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "serving.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def has_mirror() -> bool:
    return default_mirror() is not None


needs_mirror = pytest.mark.skipif(not has_mirror(), reason="real-data mirror (../shared/data) not present")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """One converted-data dir for the whole session (conversion is a fraction of a second per dataset)."""
    return tmp_path_factory.mktemp("atomic")


@pytest.fixture(scope="session")
def ml100k_split(workdir):
    from recsys.experiment import load_dataset_split

    cfg = load_config(overrides=[f"data.workdir={workdir}"])
    return cfg, load_dataset_split(cfg)


@pytest.fixture(scope="session")
def scientific_split(workdir):
    from recsys.experiment import load_dataset_split

    if not has_mirror():
        pytest.skip("mirror needed for amazon-scientific")
    cfg = load_config(overrides=["dataset=amazon-scientific", f"data.workdir={workdir}", "data.protocol=order"])
    return cfg, load_dataset_split(cfg)
