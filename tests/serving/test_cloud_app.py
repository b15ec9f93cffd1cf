"""serving.cloud_app: the cloud service in-process on a tiny real checkpoint — edits (the editor fed the checkpoint's
item ids, batched), the bank snapshot with its ETag, the key on every route but health, the edit source, and a
reload that fails keeping the old state."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException

from recsys.wire import EditPayload
from serving.cloud_app import CloudService, create_cloud_app, device_state, edit_source, teacher_dirs
from tests.serving.conftest import API_KEY, AUTH, RandomEditor
from tests.serving.tiny_run import tiny_checkpoint, tiny_config


class Recording(RandomEditor):
    """The serving tests' editor double, also recording the item ids it was asked about."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.asked: list[list[int]] = []

    def edit_many(self, asks):
        self.asked += [a.item_ids for a in asks]
        return super().edit_many(asks)


@pytest.fixture()
def cloud(tmp_path, workdir):
    cfg = tiny_config(tmp_path, workdir)
    ckpt = tiny_checkpoint(cfg)
    editor = Recording(16, 2)
    service = CloudService(cfg, ckpt, lambda: editor)
    with TestClient(create_cloud_app(service, API_KEY), base_url="http://127.0.0.1") as client:
        yield client, service, editor


def test_health_is_open_and_everything_else_needs_the_key(cloud):
    client, _, _ = cloud
    health = client.get("/healthz").json()
    assert (health["service"], health["dataset"], health["n_items"], health["version"]) == ("cloud", "ml-100k", 60,
                                                                                              "test-v1")
    assert health["prototypes"] == 3
    for method, path in [("POST", "/v1/edits"), ("GET", "/v1/prototypes"), ("POST", "/admin/reload"),
                         ("GET", "/metrics")]:
        assert client.request(method, path, json={"items": ["1"]}).status_code == 401, path


def test_an_edit_is_asked_with_the_checkpoints_item_ids(cloud):
    client, _, editor = cloud
    resp = client.post("/v1/edits", json={"items": ["7", "nope", "3"]}, headers=AUTH)
    assert resp.status_code == 200 and editor.asked == [[7, 3]]  # unknown tokens left out, tokens → ids
    payload = EditPayload.model_validate_json(resp.content)
    assert payload.version == "test-v1" and len(payload.layers) == 2


def test_the_snapshot_carries_its_version_as_etag_and_a_current_device_gets_304(cloud):
    client, _, _ = cloud
    resp = client.get("/v1/prototypes", headers=AUTH)
    assert resp.status_code == 200 and resp.headers["etag"] == '"test-v1"' and len(resp.json()["signatures"]) == 3
    again = client.get("/v1/prototypes", headers={**AUTH, "If-None-Match": '"test-v1"'})
    assert again.status_code == 304 and again.content == b""


def test_a_device_state_must_be_base64_of_the_heads_width_and_finite():
    good = base64.b64encode(np.arange(4, dtype="<f4").tobytes()).decode()
    assert device_state(good, 4).tolist() == [0, 1, 2, 3]
    for bad, msg in [(good, "must be base64 of 5"), (base64.b64encode(np.full(4, np.nan, "<f4")).decode(), "finite")]:
        with pytest.raises(HTTPException) as exc:
            device_state(bad, 4 if "finite" in msg else 5)
        assert exc.value.status_code == 422 and msg in exc.value.detail["message"]


def test_a_failed_reload_keeps_the_old_state_serving(cloud):
    client, service, _ = cloud
    ok = client.post("/admin/reload", headers=AUTH).json()
    assert ok == {"version": "test-v1", "prototypes": 3}
    (service.checkpoint_dir / "model.yaml").unlink()  # the checkpoint is gone: the new state cannot be built
    failed = client.post("/admin/reload", headers=AUTH)
    assert failed.status_code == 503 and "still serving test-v1" in failed.json()["message"]
    assert client.post("/v1/edits", json={"items": ["1"]}, headers=AUTH).status_code == 200
    metrics = client.get("/metrics", headers=AUTH).text
    assert 'persona_reloads_total{outcome="error"} 1.0' in metrics and 'outcome="ok"} 1.0' in metrics


def test_without_a_trained_adapter_the_cloud_answers_with_the_base_head(tmp_path, workdir):
    cfg = tiny_config(tmp_path, workdir)
    service = CloudService(cfg, tiny_checkpoint(cfg))
    with TestClient(create_cloud_app(service, API_KEY), base_url="http://127.0.0.1") as client:
        payload = client.post("/v1/edits", json={"items": ["1", "2"]}, headers=AUTH).json()
        assert payload["version"].startswith("base-") and payload["layers"] == []
        assert client.get("/healthz").json()["prototypes"] == 0


def test_the_edit_source_is_distilled_when_a_teacher_knows_more(tmp_path, workdir):
    cfg = tiny_config(tmp_path, workdir)
    ckpt = tiny_checkpoint(cfg)
    assert teacher_dirs(cfg, ckpt) == [] and edit_source(cfg, []) == "adapter"  # no main-job checkpoints
    assert edit_source(cfg, [ckpt, tmp_path / "other"]) == "distilled"
    named = tiny_config(tmp_path, workdir, f"serve.cloud.teacher=[{ckpt}]")
    assert teacher_dirs(named, ckpt) == [ckpt] and edit_source(named, [ckpt]) == "distilled"
    assert edit_source(tiny_config(tmp_path, workdir, "serve.cloud.edit_source=adapter"), [ckpt, ckpt]) == "adapter"
