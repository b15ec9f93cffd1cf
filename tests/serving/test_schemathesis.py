"""Schemathesis fuzzes both services from their OpenAPI schemas and must find no 5xx (bounded run).

Longer run by hand (see docs/serving.md): ``st run http://127.0.0.1:8000/openapi.json --checks all``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.artifacts import load_artifacts
from serving.cloud_app import CloudService, create_cloud_app
from serving.device_app import DeviceService, create_device_app
from serving.embeddings_api import create_embeddings_app
from tests.llm_cloud.helpers import minilm
from tests.serving.conftest import API_KEY, LiveServer, RandomEditor, serve_config

# the virtualenv's own `st` (make test does not put .venv/bin on PATH), else one on PATH; absolute, since the
# runs below change directory
_FOUND = [p for p in (Path(sys.executable).parent / "st", shutil.which("st")) if p and Path(p).is_file()]
ST = str(Path(_FOUND[0]).absolute()) if _FOUND else None


@pytest.mark.skipif(ST is None, reason="schemathesis not installed (pip install -e .[dev])")
def test_schemathesis_finds_no_server_error(checkpoint, runtime, tmp_path):
    cfg = serve_config(checkpoint, tmp_path)
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    cloud = LiveServer(create_cloud_app(CloudService(cfg, cfg.serve.checkpoint, lambda: RandomEditor(dim, n_layers)),
                                        API_KEY))
    device = LiveServer(create_device_app(DeviceService(cfg, load_artifacts(cfg), cloud.url, API_KEY), API_KEY))
    common = ["--checks", "not_a_server_error", "--max-time", "8", "--max-examples", "40", "--seed", "7", "-w", "1",
              "--no-color"]
    try:
        runs = [
            [ST, "run", f"{device.url}/openapi.json", "-H", f"Authorization: Bearer {API_KEY}", *common],
            # /v1/embeddings is the embeddings module's (tested there); fuzzing it would load the LLM backbone
            [ST, "run", f"{cloud.url}/openapi.json", "-H", f"Authorization: Bearer {API_KEY}",
             "--exclude-path", "/v1/embeddings", *common],
        ]
        for cmd in runs:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
            assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
            assert "Tested: " in proc.stdout
    finally:
        device.stop()
        cloud.stop()


@pytest.mark.skipif(ST is None, reason="schemathesis not installed (pip install -e .[dev])")
def test_schemathesis_embeddings_conform_to_their_schema(tmp_path):
    """``--checks all`` on /v1/embeddings with the real MiniLM: every answer (2xx and 4xx) as documented."""
    with LiveServer(create_embeddings_app(minilm(), api_key=API_KEY)) as srv:
        cmd = [ST, "run", f"{srv.url}/openapi.json", "-H", f"Authorization: Bearer {API_KEY}", "--checks", "all",
               "--max-time", "60", "--max-examples", "40", "--seed", "7", "-w", "1", "--no-color"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Tested: 2" in proc.stdout
