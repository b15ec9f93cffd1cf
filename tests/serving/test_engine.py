"""The device model behind one interface (serving.engine): the torch and the onnx engine give the same states,
prototypes and rankings on the same windows, edits and bank; received edits are checked against the head; the
ONNX export is written when missing or older than the checkpoint; and a device service on ``serve.device.runtime=onnx``
answers over HTTP with the torch service's rankings (a real adapter + bank in the cloud: code edits, the OOD rule,
the cache gate, the fallbacks)."""

from __future__ import annotations

import asyncio
import os
import random

import httpx
import numpy as np
import pytest
import torch

from llm_cloud.editor import load_editor
from persona_device.model import META_FILE
from recsys.wire import EditPayload
from serving.artifacts import load_artifacts
from serving.cloud_app import CloudService, create_cloud_app
from serving.device_app import DeviceService, create_device_app
from serving.engine import OnnxEngine, TorchEngine, load_engine, onnx_export_dir
from tests.serving.conftest import API_KEY, AUTH, LiveServer, real_editor_checkpoint, serve_config, wait_for

TIE = 1e-4
K = 10


@pytest.fixture(scope="module")
def setup(checkpoint, runtime, tmp_path_factory):
    """(torch engine, onnx engine, the real editor, its checkpoint, tmp) with the editor's bank loaded in both."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("engines")
    ckpt = real_editor_checkpoint(checkpoint, runtime, tmp)
    cfg = serve_config((ckpt, checkpoint[1]), tmp, "serve.device.runtime=onnx")
    art = load_artifacts(cfg)
    torch_engine = load_engine(serve_config((ckpt, checkpoint[1]), tmp), art)
    onnx_engine = load_engine(cfg, art)
    assert isinstance(torch_engine, TorchEngine) and isinstance(onnx_engine, OnnxEngine)
    editor = load_editor(ckpt, runtime.model.head.dim, ckpt / "adapter-main")
    bank = editor.snapshot().model_dump_json().encode()
    assert torch_engine.load_bank(bank) == onnx_engine.load_bank(bank) == editor.version
    return torch_engine, onnx_engine, editor, ckpt, tmp


def windows(engine, n: int = 40, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    lengths = [0, 1, 2, engine.max_seq_len + 10] + [rng.randrange(1, 30) for _ in range(n - 4)]
    return [[rng.randrange(1, engine.n_items) for _ in range(length)] for length in lengths]


def assert_same(torch_engine, state, edit, got, want) -> None:
    """Same ids in the same order; where they differ, torch scores the onnx item as its own (a tie)."""
    assert len(got[0]) == len(want[0]) and got[1] == pytest.approx(want[1], abs=TIE)
    if got[0] != want[0]:
        scores = torch_engine.rt.model.logits(torch_engine.rt.head_batch(state[None], [edit]))[0]
        assert all(abs(float(scores[g]) - w) <= TIE for g, w in zip(got[0], want[1])), (got, want)


def test_both_engines_encode_and_rank_alike(setup):
    torch_engine, onnx_engine, *_ = setup
    ws = windows(torch_engine)
    want_rows, got_rows = torch_engine.encode(ws), onnx_engine.encode(ws)
    for w, g in zip(want_rows, got_rows):
        assert np.allclose(w.state.numpy(), g.state, atol=1e-4) and w.prototype == g.prototype
    assert {r.prototype is None for r in want_rows} == {True, False}  # both sides of the OOD rule
    excludes = [set(w[:3]) for w in ws]
    ks = [K if i % 5 else 200 for i in range(len(ws))]  # 200: wider than the ONNX graph's top-100
    want = torch_engine.rank([r.state for r in want_rows], [torch_engine.fallback(r.prototype) for r in want_rows],
                             ks, excludes)  # fmt: skip
    got = onnx_engine.rank([r.state for r in got_rows], [onnx_engine.fallback(r.prototype) for r in got_rows],
                           ks, excludes)  # fmt: skip
    for row, g, w, ex in zip(want_rows, got, want, excludes):
        assert_same(torch_engine, row.state, torch_engine.fallback(row.prototype), g, w)
        assert not set(g[0]) & ex


@pytest.mark.parametrize("encoding", ["json", "fp32", "code"])
def test_received_edits_decode_and_rank_alike(setup, encoding):
    torch_engine, onnx_engine, editor, *_ = setup
    ws = windows(torch_engine, n=12, seed=1)[1:]
    rows = torch_engine.encode(ws)
    states = onnx_engine.encode(ws)
    for w, row, state in zip(ws, rows, states):
        raw = editor.edit(w, encoding, editor.version).model_dump_json().encode()  # the wire
        want, got = (e.decode(e.parse_edit(raw)) for e in (torch_engine, onnx_engine))
        assert (want.version, want.prototype_id) == (got.version, got.prototype_id)
        ranked = [e.rank([s], [r.edit], [K], [set()])[0]
                  for e, s, r in ((torch_engine, row.state, want), (onnx_engine, state.state, got))]  # fmt: skip
        assert_same(torch_engine, row.state, want.edit, ranked[1], ranked[0])


def test_an_edit_that_is_not_the_heads_is_refused(setup):
    torch_engine, onnx_engine, editor, *_ = setup
    layer = {"dW": [[0.0] * 8] * 8, "db": [0.0] * 8}  # a head of width 8
    narrow = EditPayload.model_validate({"version": editor.version, "layers": [layer] * torch_engine.n_layers})
    other_bank = editor.edit([1, 2, 3], "code", editor.version).model_copy(update={"version": "elsewhere"})
    for engine in (torch_engine, onnx_engine):
        for payload in (narrow, other_bank):
            with pytest.raises(ValueError):
                engine.decode(engine.parse_edit(payload.model_dump_json().encode()))
        for raw in (b"{not json", b'{"version": 3, "encoding": "morse"}', b"[]"):
            with pytest.raises(ValueError):
                engine.parse_edit(raw)
        with pytest.raises(ValueError):
            engine.load_bank(b'{"version": "x", "dim": 3, "signatures": [[0.0, 0.0, 0.0]]}')
        assert engine.bank_version == editor.version  # a refused bank changes nothing


def test_the_onnx_export_is_written_when_missing_or_older_than_the_checkpoint(setup, checkpoint):
    *_, ckpt, tmp = setup
    cfg = serve_config((ckpt, checkpoint[1]), tmp, "serve.device.runtime=onnx")
    out = onnx_export_dir(cfg)
    done = out / META_FILE
    stamp = done.stat().st_mtime_ns
    assert onnx_export_dir(cfg) == out and done.stat().st_mtime_ns == stamp  # complete and current: kept
    newer = done.stat().st_mtime + 5
    os.utime(ckpt / "model.pt", (newer, newer))  # a retrained checkpoint
    assert onnx_export_dir(cfg) == out and done.stat().st_mtime_ns != stamp
    elsewhere = serve_config((ckpt, checkpoint[1]), tmp, "serve.device.runtime=onnx",
                             f"serve.device.onnx_dir={tmp / 'mine'}")
    assert (onnx_export_dir(elsewhere) / META_FILE).is_file()


def test_a_device_on_onnx_ranks_as_the_device_on_torch_over_http(setup, checkpoint, runtime):
    torch_engine, _, editor, ckpt, tmp = setup
    overrides = ("serve.device.budget_ms=5000", "serve.device.refresh_every=1")
    cfgs = {rt: serve_config((ckpt, checkpoint[1]), tmp / rt, f"serve.device.runtime={rt}", *overrides)
            for rt in ("torch", "onnx")}  # fmt: skip
    rng = random.Random(3)
    tok = runtime.item_tokens
    users = {f"u{u}": [str(tok[rng.randrange(1, runtime.n_items)]) for _ in range(rng.randrange(1, 25))]
             for u in range(24)}  # fmt: skip
    bodies = [{"user_id": u, "k": K} for u in users] + [
        {"history": [str(tok[rng.randrange(1, runtime.n_items)]) for _ in range(n)], "k": K, "exclude": ["50"]}
        for n in (0, 1, 4, 40)]  # fmt: skip
    cloud = LiveServer(create_cloud_app(CloudService(cfgs["torch"], ckpt), API_KEY))
    answers = {}
    try:
        for rt, cfg in cfgs.items():
            service = DeviceService(cfg, load_artifacts(cfg), cloud.url, API_KEY)
            with LiveServer(create_device_app(service, API_KEY)) as dev, httpx.Client(timeout=60, headers=AUTH) as c:
                wait_for(lambda s=service: s.engine.code_version == editor.version, timeout=30)
                for u, items in users.items():
                    events = [{"event_id": str(i), "user_id": u, "item_id": t} for i, t in enumerate(items)]
                    assert c.post(f"{dev.url}/v1/events", json={"events": events}).status_code == 200
                answers[rt] = asyncio.run(rank_all(dev.url, bodies))
                assert c.put(f"{dev.url}/v1/cloud", json={"enabled": False}).status_code == 200
                answers[rt] += asyncio.run(rank_all(dev.url, bodies))  # alone: the cached bank or the base head
    finally:
        cloud.stop()
    kinds = set()
    for want, got in zip(answers["torch"], answers["onnx"]):
        kinds.add(want["adaptation"])
        assert {k: v for k, v in got.items() if k != "items"} == {k: v for k, v in want.items() if k != "items"}
        assert [it["score"] for it in got["items"]] == pytest.approx([it["score"] for it in want["items"]], abs=TIE)
        swapped = [(g, w) for g, w in zip(got["items"], want["items"]) if g["item_id"] != w["item_id"]]
        assert all(abs(g["score"] - w["score"]) <= TIE for g, w in swapped), swapped  # only ties may swap
    assert "cloud-edit" in kinds and kinds - {"cloud-edit"}  # fresh edits and the device alone were both compared


async def rank_all(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v1/rank", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return [r.json() for r in responses]
