"""Shared fixtures: real data (the ../shared mirror or the ml-100k copy inside recbole), small configs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from recsys.config import load_config  # noqa: E402  (recsys's own loader: the splits need no other section)
from recsys.datasets.registry import default_mirror  # noqa: E402
from serving.local_services import PERSONA, free_port, free_ports  # noqa: E402, F401  (the `persona` command; ports)

ROOT = Path(__file__).resolve().parents[1]


def persona(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``persona ARGS`` run to its end in a subprocess (stdout and stderr captured, text)."""
    return subprocess.run([*PERSONA, *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """``proc`` failed as expected: exit code 2 and one ``persona ...`` line on stderr holding each needle."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("persona ")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def persona_process(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """``persona ARGS`` (``python -m cli.main``) in the repo root, stdout and stderr merged (text)."""
    return subprocess.Popen(
        [*PERSONA, *args],
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
