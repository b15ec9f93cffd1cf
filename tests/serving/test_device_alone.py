"""scripts/device_alone.py: the torch-free runtime alone asks a real cloud on 127.0.0.1 for its bank and an edit
and ranks as the torch runtime does with the same edit, in a process where importing torch, pydantic or any
package of ours but persona_device fails; with the cloud gone it ranks from the bank it cached."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llm_cloud.editor import load_editor
from recsys.runtime import DeviceRuntime
from recsys.wire import PrototypeSnapshot
from serving.cloud_app import CloudService, create_cloud_app
from serving.engine import onnx_export_dir
from tests.conftest import ROOT
from tests.import_rules import refusing
from tests.serving.conftest import API_KEY, LiveServer, real_editor_checkpoint, serve_config

FORBIDDEN = ("torch", "recbole", "pydantic", "fastapi", "httpx", "recsys", "llm_cloud", "serving", "codebook",
             "recipes")  # fmt: skip
ALONE = refusing(FORBIDDEN) + """
import runpy
sys.argv = ["device_alone.py", *{args!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def run_alone(*args: str) -> dict:
    code = ALONE.format(forbidden=FORBIDDEN, args=[*args, "--json"], script=str(ROOT / "scripts" / "device_alone.py"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_the_runtime_alone_ranks_with_the_clouds_edit_then_with_its_cached_bank(checkpoint, runtime, tmp_path):
    ckpt = real_editor_checkpoint(checkpoint, runtime, tmp_path)
    cfg = serve_config((ckpt, checkpoint[1]), tmp_path)
    export = onnx_export_dir(cfg)
    editor = load_editor(ckpt, runtime.model.head.dim, ckpt / "adapter-main")
    items = [str(t) for t in runtime.item_tokens[[5, 17, 99, 120, 3]]]
    ids = [runtime.token_to_id[t] for t in items]
    cache = tmp_path / "device" / "prototypes.json"
    args = ["--export", str(export), "--cloud", "", "--api-key", API_KEY, "--items", ",".join(items),
            "--cache", str(cache), "--budget-ms", "5000"]  # fmt: skip
    with LiveServer(create_cloud_app(CloudService(cfg, ckpt), API_KEY)) as cloud:
        args[3] = cloud.url
        asked = run_alone(*args)
    assert asked["bank"].startswith(f"fetched bank {editor.version}") and asked["history"] == items
    assert (asked["adaptation"], asked["version"]) == ("cloud-edit", editor.version)
    want, scores = runtime.rank(ids, 10, exclude=set(ids), edit=editor.edit(ids).head_edit())  # the exact edit
    assert [it["item_id"] for it in asked["items"]] == [str(runtime.item_tokens[i]) for i in want]
    assert [it["score"] for it in asked["items"]] == pytest.approx(scores, abs=1e-4)

    alone = run_alone(*args)  # the cloud is gone: the cached bank, as the device service would rank
    local = DeviceRuntime(runtime.model, runtime.item_tokens)
    local.set_prototypes(PrototypeSnapshot.load(cache))
    state = local.user_states([ids])
    protos, _ = local.assign_batch(state)
    proto = None if local.ood_flags(state, protos)[0] else protos[0]
    edit = local.prototype_edit(proto)
    assert alone["bank"].startswith("cloud unreachable") and alone["cloud_ms"] is None
    assert alone["adaptation"] == ("prototype-cache" if edit is not None else "base")
    want, _ = local.rank(ids, 10, exclude=set(ids), edit=edit)
    assert [it["item_id"] for it in alone["items"]] == [str(runtime.item_tokens[i]) for i in want]
