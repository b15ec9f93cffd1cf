"""``make bench``: run the benchmark scripts in turn (each prints its table and writes reports/benchmarks/).

Every script in benchmarks/ is in :data:`SCRIPTS` or in :data:`SKIPPED` with the reason (a test checks it).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "adaptation_cost.py",
    "encode_codebook.py",
    "train_ddp.py",
    "train_speed.py",
    "serve_load.py",
    "serve_load_cloud.py",
    "hostile.py",
    "edit_bytes.py",
    "device_runtime.py",
    "distill.py",
    "item_delta.py",
    "context_edit_cost.py",
]
SKIPPED = {
    "replay.py": "needs the adapter + bank of every replayed seed; its commands are in docs/replay.md",
    "teacher_stream.py": "≈ 40 min on 2 cores (a fresh teacher refreshed over the stream, 3 seeds); docs/teacher.md",
    "backbones_ranking.py": "trains 3 seeds per LLM backbone per dataset (hours on 2 cores); docs/item_side.md",
    "run_all.py": "this script",
}


def main() -> int:
    for name, why in SKIPPED.items():
        print(f"skipped {name}: {why}", flush=True)
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
