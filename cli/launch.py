"""Relaunch a ``persona`` command as N DDP processes on this machine with ``torchrun`` (gloo/nccl)."""

from __future__ import annotations

import subprocess
import sys
import uuid

from cli import CliError


def resolve_nproc(cli_value: int | None, config_value: int) -> int:
    nproc = config_value if cli_value is None else cli_value
    if nproc < 1:
        raise CliError(f"--nproc must be >= 1, got {nproc}")
    return nproc


def torchrun_self(command: str, args, nproc: int, overrides: list[str] | None = None) -> int:
    """Run ``persona <command>`` (same ``--config``, ``--quiet`` and overrides) as ``nproc`` ranks; its exit code.

    One node, rendezvous on 127.0.0.1 with a free port; the multi-node form is in docs/distributed.md.
    """
    child = [
        command,
        *(["--config", args.config] if getattr(args, "config", None) else []),
        *(["--quiet"] if getattr(args, "quiet", False) else []),
    ]
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--rdzv-id", uuid.uuid4().hex,
        "-m", "cli.main", *(["-v"] if getattr(args, "verbose", False) else []), *child,
        *(args.overrides if overrides is None else overrides),
    ]  # fmt: skip
    code = subprocess.call(cmd)
    if code:
        print(f"persona {command}: error: {nproc}-process torchrun job failed (exit code {code})", file=sys.stderr)
    return code
