"""The distilled edit served by the live cloud and applied by the live device, over HTTP on 127.0.0.1: the
rankings equal the offline ``distilled_edit`` row by row, the edit is D floats on the wire, the default picks it
when the main job's checkpoints are there, a teacher of another vocabulary is refused at start-up, auth as ever."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import numpy as np
import pytest
import torch

from llm_cloud.distill import distilled_edit, last_bias_edit
from llm_cloud.distill_editor import DistilledEditor
from llm_cloud.item_delta import ItemDeltaConfig, fit_item_delta
from llm_cloud.teacher import EnsembleTeacher
from recsys import run_layout
from recsys.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from recsys.runtime import DeviceRuntime
from recsys.wire import EditPayload, ItemTableDelta, PrototypeSnapshot, pack
from serving.artifacts import load_artifacts
from serving.auth import Credentials
from serving.cloud_app import CloudService, create_cloud_app
from serving.device_app import DeviceService, create_device_app
from serving.metrics import read_samples
from tests.conftest import free_port, persona_process
from tests.serving.conftest import API_KEY, AUTH, LiveServer, serve_config, wait_for

N_USERS = 8


def main_job_runs(checkpoint, tmp_path, tokens: np.ndarray | None = None):
    """``<tmp>/runs/ml-100k/sasrec/seed{0,1}`` as `make run` leaves them: seed 0 the served checkpoint, seed 1 a
    model that ranks differently (its head's last bias moved); ``tokens``: seed 1's vocabulary instead."""
    model, meta, own = load_checkpoint(checkpoint[0])
    seed0 = run_layout.seed_dir(tmp_path / "runs", meta.dataset, meta.model, 0)
    shutil.copytree(checkpoint[0], seed0)
    with torch.no_grad():
        model.head.layers[-1].bias.add_(torch.randn(model.head.dim, generator=torch.Generator().manual_seed(0)) * 0.8)
    seed1 = run_layout.seed_dir(tmp_path / "runs", meta.dataset, meta.model, 1)
    save_checkpoint(seed1, model, meta.dataset, own if tokens is None else tokens, meta.extra)
    return seed0, seed1


def histories(runtime) -> list[list[str]]:
    g = np.random.default_rng(0)
    return [[str(runtime.item_tokens[i]) for i in g.integers(1, runtime.n_items, 3 + 2 * u)] for u in range(N_USERS)]


def offline(runtime, teacher_dirs, cfg, rows: list[list[int]]) -> list:
    """``benchmarks/distill.py``'s edit for each history, solved in one batch: the device's own encoding."""
    seq, length = runtime.encode_histories(rows)
    target = EnsembleTeacher.load(teacher_dirs).log_probs(seq, length)
    delta = distilled_edit(runtime.model, seq, length, target, cfg.serve.cloud.distill).db[-1]
    clip = cfg.serve.cloud.distill.clip
    return [last_bias_edit(delta[b], len(runtime.model.head.layers), clip) for b in range(len(rows))]


def test_the_default_serves_the_distilled_edit_when_the_main_jobs_checkpoints_are_there(checkpoint, tmp_path):
    seed0, seed1 = main_job_runs(checkpoint, tmp_path)
    cfg = serve_config(checkpoint, tmp_path, f"serve.checkpoint={seed0}")  # output_dir: <tmp>/runs
    assert cfg.serve.cloud.edit_source == "auto" and cfg.serve.cloud.teacher is None
    editor = CloudService(cfg, seed0).state.editor
    assert isinstance(editor, DistilledEditor) and editor.teacher.names == [str(seed0), str(seed1)]
    adapter = serve_config(checkpoint, tmp_path, f"serve.checkpoint={seed0}", "serve.cloud.edit_source=adapter")
    assert not isinstance(CloudService(adapter, seed0).state.editor, DistilledEditor)  # the adapter path stays
    shutil.rmtree(seed1)  # the device's own checkpoint alone teaches it nothing: no distilled edit
    assert not isinstance(CloudService(cfg, seed0).state.editor, DistilledEditor)


def test_the_device_ranks_with_the_served_distilled_edit_as_offline_row_by_row(checkpoint, runtime, tmp_path):
    torch.set_num_threads(1)
    seed0, seed1 = main_job_runs(checkpoint, tmp_path)
    cfg = serve_config(checkpoint, tmp_path, f"serve.checkpoint={seed0}", "serve.device.budget_ms=5000")
    cloud = CloudService(cfg, seed0)
    version = cloud.state.editor.version
    users = histories(runtime)
    rows = [[runtime.token_to_id[t] for t in h] for h in users]
    want = offline(runtime, [seed0, seed1], cfg, rows)
    with LiveServer(create_cloud_app(cloud, API_KEY)) as cl, httpx.Client(timeout=60, headers=AUTH) as c:
        device = DeviceService(cfg, load_artifacts(cfg), cl.url, API_KEY)
        with LiveServer(create_device_app(device, API_KEY)) as dev:
            wait_for(lambda: device.engine.bank_version == version)
            for u, items in enumerate(users):
                events = [{"event_id": str(i), "user_id": f"u{u}", "item_id": t} for i, t in enumerate(items)]
                assert c.post(f"{dev.url}/v1/events", json={"events": events}).status_code == 200

            async def rank_all():  # concurrently: the cloud answers them in shared batches
                async with httpx.AsyncClient(base_url=dev.url, headers=AUTH, timeout=60) as client:
                    return await asyncio.gather(*[client.post("/v1/rank", json={"user_id": f"u{u}", "k": 10})
                                                  for u in range(N_USERS)])  # fmt: skip

            changed = 0
            for u, resp in enumerate(asyncio.run(rank_all())):
                body = resp.json()
                assert (body["adaptation"], body["version"], body["prototype_id"]) == ("cloud-edit", version, None)
                top, _ = runtime.rank(rows[u], 10, exclude=set(rows[u]), edit=want[u])
                assert [it["item_id"] for it in body["items"]] == [str(runtime.item_tokens[i]) for i in top], u
                changed += top != runtime.rank(rows[u], 10, exclude=set(rows[u]))[0]
            assert changed >= N_USERS // 2  # the edit moves rankings, so the equality above can fail

            cut = c.put(f"{dev.url}/v1/cloud", json={"enabled": False})
            assert cut.status_code == 200 and cut.json()["prototypes"] == 0  # an empty bank: nothing cached to serve
            alone = c.post(f"{dev.url}/v1/rank", json={"user_id": "u0", "k": 10}).json()
            assert alone["adaptation"] == "base"
            top, _ = runtime.rank(rows[0], 10, exclude=set(rows[0]))
            assert [it["item_id"] for it in alone["items"]] == [str(runtime.item_tokens[i]) for i in top]


def test_concurrent_edit_requests_are_batched_and_the_edit_is_d_floats_on_the_wire(checkpoint, runtime, tmp_path):
    torch.set_num_threads(1)
    seed0, seed1 = main_job_runs(checkpoint, tmp_path)
    cfg = serve_config(checkpoint, tmp_path, f"serve.checkpoint={seed0}")
    users = histories(runtime)
    want = offline(runtime, [seed0, seed1], cfg, [[runtime.token_to_id[t] for t in h] for h in users])
    dim = runtime.model.head.dim
    with LiveServer(create_cloud_app(CloudService(cfg, seed0), API_KEY)) as cl:

        async def burst(encoding: str):
            async with httpx.AsyncClient(base_url=cl.url, headers=AUTH, timeout=60) as client:
                return await asyncio.gather(*[client.post("/v1/edits", json={"items": h, "encoding": encoding})
                                              for h in users])  # fmt: skip

        sizes = {}
        for encoding, sent, limit in (("code", "fp32", 4 * dim * 4 / 3 + 200), ("fp16", "fp16", 2 * dim * 4 / 3 + 200)):
            for u, resp in enumerate(asyncio.run(burst(encoding))):
                assert resp.status_code == 200 and len(resp.content) <= limit, (len(resp.content), resp.text)
                payload = resp.json()
                assert (payload["encoding"], payload["parts"], "prototype_id" in payload) == (sent, ["db.1"], False)
                edit = runtime.decode_edit(EditPayload.model_validate(payload))  # as the device decodes it
                exact = want[u].db[-1] if sent == "fp32" else want[u].db[-1].half().float()
                assert torch.allclose(edit.db[-1], exact, atol=1e-5 if sent == "fp32" else 1e-3)
            sizes[sent] = len(resp.content)
        text = httpx.get(f"{cl.url}/metrics", headers=AUTH).text
    batches = {name: v for name, _, v in read_samples(text) if name.startswith("persona_edit_batch_size")}
    assert batches["persona_edit_batch_size_sum"] == 2 * N_USERS
    assert batches["persona_edit_batch_size_count"] < 2 * N_USERS  # some requests answered together
    assert sizes["fp16"] < sizes["fp32"] < 600


def test_the_distilled_cloud_keeps_its_auth(checkpoint, tmp_path):
    seed0, _ = main_job_runs(checkpoint, tmp_path)
    cfg = serve_config(checkpoint, tmp_path, f"serve.checkpoint={seed0}")
    user = {"Authorization": f"Bearer {Credentials(API_KEY).issue('someone', 3600)[0]}"}  # a device token
    with LiveServer(create_cloud_app(CloudService(cfg, seed0), API_KEY)) as cl, httpx.Client(timeout=30) as c:
        for path, body in (("/v1/edits", {"items": ["50"]}), ("/admin/reload", None)):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, user):
                assert c.post(f"{cl.url}{path}", json=body, headers=headers).status_code == 401
        assert c.get(f"{cl.url}/v1/prototypes", headers=user).status_code == 401
        assert c.post(f"{cl.url}/v1/edits", json={"items": ["50"]}, headers={"X-API-Key": API_KEY}).status_code == 200
        reloaded = c.post(f"{cl.url}/admin/reload", headers=AUTH)
        assert reloaded.status_code == 200 and reloaded.json()["version"].startswith("distilled-")


def test_a_teacher_of_another_vocabulary_is_refused_at_start_up(checkpoint, runtime, tmp_path):
    other = np.array([*runtime.item_tokens[:-1], "not-an-item"])
    seed0, seed1 = main_job_runs(checkpoint, tmp_path, tokens=other)
    cfg = serve_config(checkpoint, tmp_path, f"serve.checkpoint={seed0}")
    with pytest.raises(CheckpointError, match="serve.cloud.teacher cannot teach this device"):
        CloudService(cfg, seed0)
    explicit = serve_config(checkpoint, tmp_path, f"serve.checkpoint={seed0}", f"serve.cloud.teacher=[{seed1}]")
    with pytest.raises(CheckpointError, match=str(seed0)):
        CloudService(explicit, seed0)
    proc = persona_process(["serve", "--role", "cloud", "--cloud-port", str(free_port()), f"serve.checkpoint={seed0}",
                            f"output_dir={tmp_path / 'runs'}", "serve.api_key=k"])  # fmt: skip
    out, _ = proc.communicate(timeout=120)
    errors = [ln for ln in out.splitlines() if ln.startswith("persona serve: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "another item vocabulary" in errors[0], out[-2000:]


def test_the_cloud_solves_from_the_state_the_device_sent_and_reads_the_checkpoint_once(checkpoint, runtime, tmp_path):
    torch.set_num_threads(1)
    seed0, seed1 = main_job_runs(checkpoint, tmp_path)
    cfg = serve_config(checkpoint, tmp_path, f"serve.checkpoint={seed0}")
    cloud = CloudService(cfg, seed0)
    editor = cloud.state.editor
    assert editor.teacher.models[0] is editor.device  # seed 0 serves and teaches: one model, read once
    history = histories(runtime)[3]
    ids = [runtime.token_to_id[t] for t in history]
    state = runtime.user_states([ids])
    moved = state + torch.randn(state.shape, generator=torch.Generator().manual_seed(1))  # not the history's state
    seq, length = runtime.encode_histories([ids])
    target = EnsembleTeacher.load([seed0, seed1]).log_probs(seq, length)
    want = distilled_edit(runtime.model, seq, length, target, cfg.serve.cloud.distill, states=moved).db[-1][0]
    with LiveServer(create_cloud_app(cloud, API_KEY)) as cl, httpx.Client(timeout=60, headers=AUTH) as c:

        def edit(**extra) -> torch.Tensor:
            resp = c.post(f"{cl.url}/v1/edits", json={"items": history, "encoding": "fp32", **extra})
            assert resp.status_code == 200, resp.text
            return runtime.decode_edit(EditPayload.model_validate(resp.json())).db[-1]

        own = edit()
        assert torch.allclose(edit(state=pack(state[0], "<f4")), own, atol=1e-5)  # the device's state: same edit
        sent = edit(state=pack(moved[0], "<f4"))
        assert torch.allclose(sent, want, atol=1e-5) and not torch.allclose(sent, own, atol=1e-2)  # it is used
        dim = runtime.model.head.dim
        for bad, why in ((pack(state[0, :-1], "<f4"), f"{dim} little-endian float32"),
                         (pack(np.full(dim, np.inf), "<f4"), "finite"), ("AAA", "base64"), ("no base64!", "pattern")):
            resp = c.post(f"{cl.url}/v1/edits", json={"items": history, "state": bad})
            assert resp.status_code == 422 and "state" in resp.json()["message"], resp.text
            assert why in resp.text, resp.text


def test_the_device_fetches_the_item_delta_with_the_bank_and_ranks_with_it_with_and_without_the_cloud(
    checkpoint, runtime, tmp_path
):
    torch.set_num_threads(1)
    seed0, seed1 = main_job_runs(checkpoint, tmp_path)
    users = histories(runtime)
    rows = [[runtime.token_to_id[t] for t in h] for h in users]
    seq, length = runtime.encode_histories(rows)
    teacher = EnsembleTeacher.load([seed0, seed1])
    with torch.no_grad():
        states = runtime.model.user_state(seq, length)
    delta = fit_item_delta(runtime.model, states, teacher.log_probs(seq, length), ItemDeltaConfig(rows=200))
    run_layout.item_delta_file(seed0).write_text(ItemTableDelta.of(delta.ids, delta.rows, "fp32").model_dump_json())
    cfg = serve_config(checkpoint, tmp_path, f"serve.checkpoint={seed0}", "serve.device.budget_ms=5000")
    cloud = CloudService(cfg, seed0)
    snapshot = cloud.state.editor.snapshot()
    offline_rt = DeviceRuntime(runtime.model, runtime.item_tokens)
    offline_rt.set_prototypes(PrototypeSnapshot.model_validate_json(snapshot.model_dump_json()))  # as fetched
    target = teacher.log_probs(seq, length)
    edits = distilled_edit(runtime.model, seq, length, target, cfg.serve.cloud.distill, items=offline_rt.scoring_items)
    n_layers = len(runtime.model.head.layers)
    with LiveServer(create_cloud_app(cloud, API_KEY)) as cl, httpx.Client(timeout=60, headers=AUTH) as c:
        device = DeviceService(cfg, load_artifacts(cfg), cl.url, API_KEY)
        with LiveServer(create_device_app(device, API_KEY)) as dev:
            wait_for(lambda: device.engine.bank_version == snapshot.version)
            for u, items in enumerate(users):
                events = [{"event_id": str(i), "user_id": f"u{u}", "item_id": t} for i, t in enumerate(items)]
                assert c.post(f"{dev.url}/v1/events", json={"events": events}).status_code == 200
            tokens = lambda ids: [str(runtime.item_tokens[i]) for i in ids]  # noqa: E731
            for u in range(N_USERS):
                body = c.post(f"{dev.url}/v1/rank", json={"user_id": f"u{u}", "k": 10}).json()
                edit = last_bias_edit(edits.db[-1][u], n_layers, cfg.serve.cloud.distill.clip)
                want, _ = offline_rt.rank(rows[u], 10, exclude=set(rows[u]), edit=edit)
                assert body["adaptation"] == "cloud-edit" and [it["item_id"] for it in body["items"]] == tokens(want)
            assert c.put(f"{dev.url}/v1/cloud", json={"enabled": False}).status_code == 200
            moved = 0
            for u in range(N_USERS):  # the cloud cut: the cached bank's item delta still ranks
                body = c.post(f"{dev.url}/v1/rank", json={"user_id": f"u{u}", "k": 10}).json()
                want, _ = offline_rt.rank(rows[u], 10, exclude=set(rows[u]))
                assert body["adaptation"] == "base" and [it["item_id"] for it in body["items"]] == tokens(want)
                moved += want != runtime.rank(rows[u], 10, exclude=set(rows[u]))[0]
            assert moved >= N_USERS // 2  # the delta moves rankings, so the equalities above can fail
