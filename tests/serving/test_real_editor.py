"""The real cloud editor (adapter + prototype bank on the served base model) over HTTP on 127.0.0.1:
the device decodes compact ``code`` edits to exactly the served edit, and the wire bytes are measured."""

from __future__ import annotations

import httpx

from llm_cloud.editor import AdapterEditor, load_editor
from serving.artifacts import load_artifacts
from serving.cloud_app import CloudService, create_cloud_app
from serving.device_app import DeviceService, create_device_app
from tests.serving.conftest import API_KEY, AUTH, LiveServer, rank, real_editor_checkpoint, serve_config, wait_for


def test_device_serves_the_real_editors_code_edits_and_the_bytes_are_small(checkpoint, runtime, tmp_path):
    ckpt = real_editor_checkpoint(checkpoint, runtime, tmp_path)
    cfg = serve_config((ckpt, checkpoint[1]), tmp_path)
    editor = load_editor(ckpt, runtime.model.head.dim, ckpt / "adapter-main")
    assert isinstance(editor, AdapterEditor)
    cloud = CloudService(cfg, ckpt)  # the default factory: the real editor from the artifacts
    items = [str(t) for t in runtime.item_tokens[[5, 17, 99, 120, 3]]]
    ids = [runtime.token_to_id[t] for t in items]
    with LiveServer(create_cloud_app(cloud, API_KEY)) as cl, httpx.Client(timeout=30, headers=AUTH) as c:
        device = DeviceService(cfg, load_artifacts(cfg), cl.url, API_KEY)
        with LiveServer(create_device_app(device, API_KEY)) as dev:
            wait_for(lambda: device.engine.code_version == editor.version, timeout=30)
            events = [{"event_id": f"e{i}", "user_id": "ann", "item_id": t} for i, t in enumerate(items)]
            assert c.post(f"{dev.url}/v1/events", json={"events": events}).status_code == 200
            resp = rank(c, dev.url, user_id="ann", k=10).json()
            assert resp["adaptation"] == "cloud-edit" and resp["version"] == editor.version
            want, _ = runtime.rank(ids, 10, exclude=set(ids), edit=editor.edit(ids).head_edit())
            assert [it["item_id"] for it in resp["items"]] == [str(runtime.item_tokens[i]) for i in want]
            static, _ = runtime.rank(ids, 10, exclude=set(ids))
            assert want != static  # the served edit changes the ranking, so the check above can fail

        # bytes on the wire, as the device receives them
        sizes = {}
        for encoding in ("json", "fp32", "fp16", "code"):
            body = {"items": items, "encoding": encoding, "bank_version": editor.version}
            r = c.post(f"{cl.url}/v1/edits", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
            assert r.status_code == 200 and r.json()["encoding"] == encoding
            sizes[encoding] = len(r.content)
        assert sizes["code"] < 1024 < sizes["fp16"] < sizes["fp32"] < sizes["json"], sizes
        snap = c.get(f"{cl.url}/v1/prototypes", headers={"Authorization": f"Bearer {API_KEY}"}).json()
        assert snap["ood"] is not None and snap["decoder"]["n_prototypes"] == 3


def test_a_dynamic_cloud_publishes_its_learnt_bank_and_the_device_takes_it(checkpoint, runtime, tmp_path):
    """``serve.cloud.dynamic_bank=true``: the bank learns from the histories devices send and is published under a
    new version every ``serve.cloud.bank_publish_every`` answers; the device refetches it (ETag) and keeps ranking."""
    ckpt = real_editor_checkpoint(checkpoint, runtime, tmp_path)
    cfg = serve_config((ckpt, checkpoint[1]), tmp_path, "serve.cloud.dynamic_bank=true",
                       "serve.cloud.bank_publish_every=3", "serve.device.refresh_every=1")
    cloud = CloudService(cfg, ckpt)
    first = cloud.state.editor.version
    items = [str(t) for t in runtime.item_tokens[[5, 17, 99, 120, 3, 42, 7]]]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with LiveServer(create_cloud_app(cloud, API_KEY)) as cl, httpx.Client(timeout=30, headers=AUTH) as c:
        device = DeviceService(cfg, load_artifacts(cfg), cl.url, API_KEY)
        with LiveServer(create_device_app(device, API_KEY)) as dev:
            wait_for(lambda: device.engine.bank_version == first,
                     timeout=30)
            for i, t in enumerate(items):  # one event at a time: each new history asks the cloud
                assert c.post(f"{dev.url}/v1/events", json={"events": [
                    {"event_id": f"e{i}", "user_id": "ann", "item_id": t}]}).status_code == 200
                assert rank(c, dev.url, user_id="ann", k=10).status_code == 200
            wait_for(lambda: cloud.state.editor.published >= 2, timeout=30)
            editor = cloud.state.editor
            assert editor.outcomes >= 3 and editor.version.startswith(f"{first}+")
            wait_for(lambda: device.engine.bank_version != first, timeout=30)
            snap = c.get(f"{cl.url}/v1/prototypes", headers=auth)
            assert snap.status_code == 200 and snap.json()["version"] == snap.headers["ETag"].strip('"')
            again = c.get(f"{cl.url}/v1/prototypes", headers={**auth, "If-None-Match": snap.headers["ETag"]})
            assert again.status_code == 304
            assert rank(c, dev.url, user_id="ann", k=10).json()["version"].startswith(f"{first}+")
