"""``make bench``: run every benchmark script in turn (each prints its table and writes reports/benchmarks/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "adaptation_cost.py",
    "encode_codebook.py",
    "rqvae_vs_rq.py",
    "train_ddp.py",
    "train_speed.py",
    "serve_load.py",
    "serve_load_cloud.py",
    "hostile.py",
    "edit_bytes.py",
    "device_runtime.py",
]


def main() -> int:
    failed = []
    for name in SCRIPTS:
        print(f"\n=== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
