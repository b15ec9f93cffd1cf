"""Serving fixtures: a tiny real SASRec checkpoint (1 epoch on ml-100k), live uvicorn servers on 127.0.0.1,
and a test double of the cloud's editor that returns real, non-zero edits."""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from llm_cloud.editor import edit_one
from recsys.runtime import DeviceRuntime
from recsys.wire import EditPayload, PrototypeSnapshot
from serving.config import AppConfig, load_app_config
from serving.server import bind, uvicorn_config

API_KEY = "test-key"  # the cloud API key, and the device operator key in these tests (as in `make serve`)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint dir, data workdir) of the default SASRec (LLM side view ``fused``) trained one epoch on
    ml-100k, after the real MiniLM codebook that writes its side file (about 30 s)."""
    import argparse

    from cli import codebook
    from recsys.experiment import train_seeds

    root = tmp_path_factory.mktemp("serving")
    overrides = ["train.epochs=1", "seeds=[0]", f"output_dir={root / 'runs'}", f"data.workdir={root / 'atomic'}",
                 f"reports_dir={root / 'reports'}"]
    torch.set_num_threads(1)
    assert codebook.run(argparse.Namespace(config=None, overrides=overrides)) == 0
    cfg = load_app_config(overrides=overrides)
    assert cfg.model_params.item_side == "fused"
    (path,) = train_seeds(cfg, progress=False)
    return path, root / "atomic"


@pytest.fixture(scope="session")
def runtime(checkpoint) -> DeviceRuntime:
    return DeviceRuntime.load(checkpoint[0])


def serve_config(checkpoint, tmp_path: Path, *overrides: str) -> AppConfig:
    ckpt, workdir = checkpoint
    return load_app_config(
        overrides=[
            f"serve.checkpoint={ckpt}",
            f"data.workdir={workdir}",
            f"output_dir={tmp_path / 'runs'}",  # nothing read from the repo's runs/ (e.g. a default teacher)
            f"serve.device.db_path={tmp_path / 'events.db'}",
            f"serve.device.prototype_cache={tmp_path / 'prototypes.json'}",
            f"serve.api_key={API_KEY}",
            "serve.device.budget_ms=200",
            "serve.device.cloud_retry_s=0.3",
            "serve.device.prototypes_refresh_s=0.3",
            "serve.device.refresh_every=2",
            "serve.cloud.reload_poll_s=0",
            "serve.http.access_log=false",
            *overrides,
        ]
    )


class LiveServer:
    """A real uvicorn server (httptools + uvloop) for ``app`` in a thread, on 127.0.0.1."""

    def __init__(self, app, port: int = 0):
        self.app = app
        sock = bind("127.0.0.1", port)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "server did not stop"

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _seeded(key: str) -> torch.Generator:
    return torch.Generator().manual_seed(int(hashlib.sha256(key.encode()).hexdigest()[:12], 16))


def random_edit(key: str, dim: int, n_layers: int, version: str, prototype_id: int | None = None) -> EditPayload:
    gen = _seeded(key)
    layers = [
        {
            "dW": (torch.randn(dim, dim, generator=gen) * 0.3).tolist(),
            "db": (torch.randn(dim, generator=gen) * 0.3).tolist(),
        }
        for _ in range(n_layers)
    ]
    return EditPayload.model_validate({"version": version, "prototype_id": prototype_id, "clip": 1.0, "layers": layers})


class RandomEditor:
    """TEST DOUBLE of the cloud's producer only (the real one is ``llm_cloud.editor.load_editor``): returns
    real, non-zero edits — random ΔW/Δb seeded by the item ids — and a bank of ``n_prototypes`` random
    signatures with random edits, so the services' use of edits and prototypes is observable in rankings."""

    def __init__(self, dim: int, n_layers: int, version: str = "test-v1", n_prototypes: int = 3):
        self.dim, self.n_layers, self.version = dim, n_layers, version
        gen = _seeded(f"{version}:signatures")
        self.signatures = torch.randn(n_prototypes, dim, generator=gen)
        self.calls, self.batches = 0, []  # edit_many calls, and the size of each
        self.delay_s = 0.0  # each batch takes this long first (a slow cloud: the fault a test injects)

    def edit_many(self, asks) -> list[EditPayload]:
        if self.delay_s:
            time.sleep(self.delay_s)
        self.calls += 1
        self.batches.append(len(asks))
        return [random_edit(f"{self.version}:{a.item_ids}", self.dim, self.n_layers, self.version) for a in asks]

    edit = edit_one

    def snapshot(self) -> PrototypeSnapshot:
        edits = [
            random_edit(f"{self.version}:proto{k}", self.dim, self.n_layers, self.version, k)
            for k in range(len(self.signatures))
        ]
        return PrototypeSnapshot(version=self.version, dim=self.dim, signatures=self.signatures.tolist(), edits=edits)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def rank(client: httpx.Client, url: str, **body) -> httpx.Response:
    return client.post(f"{url}/v1/rank", json=body)


@contextmanager
def device_and_cloud(checkpoint, runtime, tmp_path: Path, *overrides: str):
    """Live (device, cloud) servers on 127.0.0.1: the cloud edits with :class:`RandomEditor`, the device uses it."""
    from serving.artifacts import load_artifacts
    from serving.cloud_app import CloudService, create_cloud_app
    from serving.device_app import DeviceService, create_device_app

    cfg = serve_config(checkpoint, tmp_path, *overrides)
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    cloud = LiveServer(create_cloud_app(CloudService(cfg, cfg.serve.checkpoint, lambda: RandomEditor(dim, n_layers)),
                                        API_KEY))  # fmt: skip
    try:
        service = DeviceService(cfg, load_artifacts(cfg), cloud.url, API_KEY)
        with LiveServer(create_device_app(service, API_KEY)) as device:
            yield device, cloud
    finally:
        cloud.stop()


def real_editor_checkpoint(checkpoint, runtime, tmp_path):
    """A copy of the served checkpoint with a small real adapter + bank next to it (as `persona adapter` writes)."""
    import shutil

    import numpy as np

    from llm_cloud.adapter import Adapter
    from llm_cloud.adapter_config import AdapterConfig, PrototypeConfig
    from llm_cloud.adapter_data import training_samples
    from llm_cloud.artifacts import save_adapter, save_bank
    from llm_cloud.prototype_build import build_bank

    ckpt = tmp_path / "seed0"
    shutil.copytree(checkpoint[0], ckpt)
    base = runtime.model
    torch.manual_seed(0)
    cfg = AdapterConfig(window=4, code_dim=8, clip=0.05)
    adapter = Adapter(cfg, base.n_items, base.head.dim, len(base.head.layers))
    for p in [*adapter.proj_w.parameters(), *adapter.proj_b.parameters()]:
        torch.nn.init.normal_(p, std=0.05)  # an untrained adapter's edit is zero: make it visible in rankings
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, base.n_items, 15) for _ in range(60)]
    samples = training_samples(base, seqs, n_window=4, n_future=1)
    with torch.enable_grad():
        bank = build_bank(PrototypeConfig(k=3, variant="centre"), base, adapter, samples, None, seed=0,
                          calibration=(samples.state, samples.targets[:, 0]))
    save_adapter(ckpt / "adapter-main", adapter, {"seed": 0})
    save_bank(ckpt / "bank-centre", bank)
    return ckpt
