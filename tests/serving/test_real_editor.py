"""The real cloud editor (adapter + prototype bank on the served base model) over HTTP on 127.0.0.1:
the device decodes compact ``code`` edits to exactly the served edit, and the wire bytes are measured."""

from __future__ import annotations

import httpx

from llm_cloud.editor import AdapterEditor, load_editor
from serving.artefacts import load_artefacts
from serving.cloud_app import CloudService, create_cloud_app
from serving.device_app import DeviceService, create_device_app
from tests.serving.conftest import API_KEY, LiveServer, rank, real_editor_checkpoint, serve_config, wait_for


def test_device_serves_the_real_editors_code_edits_and_the_bytes_are_small(checkpoint, runtime, tmp_path):
    ckpt = real_editor_checkpoint(checkpoint, runtime, tmp_path)
    cfg = serve_config((ckpt, checkpoint[1]), tmp_path)
    editor = load_editor(ckpt, runtime.model.head.dim, ckpt / "adapter-main")
    assert isinstance(editor, AdapterEditor)
    cloud = CloudService(cfg, ckpt)  # the default factory: the real editor from the artefacts
    items = [str(t) for t in runtime.item_tokens[[5, 17, 99, 120, 3]]]
    ids = [runtime.token_to_id[t] for t in items]
    with LiveServer(create_cloud_app(cloud, API_KEY)) as cl, httpx.Client(timeout=30) as c:
        device = DeviceService(cfg, load_artefacts(cfg), cl.url, API_KEY)
        with LiveServer(create_device_app(device)) as dev:
            wait_for(lambda: device.runtime.edit_encoding_ready == editor.version, timeout=30)
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


def test_a_counting_cloud_moves_the_ood_score_and_the_device_takes_it(checkpoint, runtime, tmp_path):
    """``serve.count_outcomes=true``: the histories the device sends are counted into the bank's OOD score;
    ``GET /v1/prototypes/ood`` serves it (ETag, 304) and the device swaps it into its cached bank."""
    ckpt = real_editor_checkpoint(checkpoint, runtime, tmp_path)
    cfg = serve_config((ckpt, checkpoint[1]), tmp_path, "serve.count_outcomes=true", "serve.refresh_every=1")
    cloud = CloudService(cfg, ckpt)
    items = [str(t) for t in runtime.item_tokens[[5, 17, 99, 120, 3, 42, 7]]]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with LiveServer(create_cloud_app(cloud, API_KEY)) as cl, httpx.Client(timeout=30) as c:
        device = DeviceService(cfg, load_artefacts(cfg), cl.url, API_KEY)
        with LiveServer(create_device_app(device)) as dev:
            wait_for(lambda: device.runtime.prototypes is not None and device.runtime.prototypes.ood, timeout=30)
            before = device.runtime.prototypes.ood.proto_logodds
            first = c.get(f"{cl.url}/v1/prototypes/ood", headers=auth)
            assert first.status_code == 200 and first.json()["outcomes"] == 0
            for i, t in enumerate(items):  # one event at a time: each new history asks the cloud
                assert c.post(f"{dev.url}/v1/events", json={"events": [
                    {"event_id": f"e{i}", "user_id": "ann", "item_id": t}]}).status_code == 200
                assert rank(c, dev.url, user_id="ann", k=10).status_code == 200
            wait_for(lambda: cloud.state.editor.outcomes >= 3, timeout=30)
            counted, score = cloud.state.editor.ood_update()
            assert score.proto_logodds != before
            wait_for(lambda: device.runtime.prototypes.ood.proto_logodds != before, timeout=30)
            assert device.ood_etag is not None and device.ood_etag.startswith(cloud.state.snapshot.version)
            update = c.get(f"{cl.url}/v1/prototypes/ood", headers=auth)
            assert update.json()["outcomes"] == cloud.state.editor.outcomes >= counted
            again = c.get(f"{cl.url}/v1/prototypes/ood", headers={**auth, "If-None-Match": update.headers["ETag"]})
            assert again.status_code == 304
            assert c.get(f"{cl.url}/v1/prototypes/ood").status_code == 401
