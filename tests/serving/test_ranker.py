"""The rank path in one pass, traced through a live device and cloud on 127.0.0.1: from the route, each request
crosses the route, ``Ranker.rank`` and its four steps (input, user state, decision and edit, scores), each step
once per request, and nothing below the ranker calls back up into it or into the service."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

import serving
from serving.artifacts import load_artifacts
from serving.device_app import DeviceService, create_device_app
from serving.ranker import Ranker
from tests.serving.conftest import API_KEY, AUTH, LiveServer, RandomEditor, rank, serve_config, wait_for
from tests.serving.test_services import cloud_app, post_events

SERVING = str(Path(serving.__file__).parent)
ROUTE = "_user_routes.<locals>.rank"
STEPS = {"read_rank_input", "RankBatcher.encode", "Adaptation.choose", "RankBatcher.score"}


class CallGraph:
    """Who calls whom among the functions of ``serving/`` (comprehensions and lambdas folded into their function;
    a coroutine resumed by its awaiting coroutine counts as called by it, as when it started)."""

    def __init__(self):
        self.edges: set[tuple[str | None, str]] = set()

    def __call__(self, frame, event, arg):
        if event == "call" and _ours(frame):
            parent = frame.f_back
            while parent is not None and not _ours(parent):
                parent = parent.f_back
            self.edges.add((parent.f_code.co_qualname if parent else None, frame.f_code.co_qualname))

    def callees(self, name: str) -> set[str]:
        return {child for parent, child in self.edges if parent == name}

    def callers(self, prefix: str) -> set[str | None]:
        return {parent for parent, child in self.edges if child.startswith(prefix)}


def _ours(frame) -> bool:
    return frame.f_code.co_filename.startswith(SERVING) and not frame.f_code.co_name.startswith("<")


def test_a_rank_request_crosses_six_functions_and_nothing_calls_back_up(checkpoint, runtime, tmp_path):
    dim, n_layers = runtime.model.head.dim, len(runtime.model.head.layers)
    editor = RandomEditor(dim, n_layers)
    cfg = serve_config(checkpoint, tmp_path)
    capp, _ = cloud_app(cfg, lambda: editor)
    items = [str(t) for t in runtime.item_tokens[1:9]]
    graph = CallGraph()
    with LiveServer(capp) as cloud:
        service = DeviceService(cfg, load_artifacts(cfg), cloud.url, API_KEY)
        assert isinstance(service.ranker, Ranker)
        threading.setprofile(graph)  # the device's server thread is traced (started below)
        try:
            device = LiveServer(create_device_app(service, API_KEY))
        finally:
            threading.setprofile(None)
        with device, httpx.Client(timeout=30, headers=AUTH) as c:
            wait_for(lambda: c.get(f"{device.url}/healthz").json()["prototypes"] == 3)
            post_events(c, device.url, "ann", items[:4])
            kinds = [rank(c, device.url, user_id="ann", k=5).json()["adaptation"],  # asks the cloud
                     rank(c, device.url, user_id="ann", k=5).json()["adaptation"],  # its cached edit
                     rank(c, device.url, history=items[4:], k=3).json()["adaptation"]]  # fmt: skip
            assert rank(c, device.url, user_id="ann", k=0).status_code == 422
            c.put(f"{device.url}/v1/cloud", json={"enabled": False})
            kinds.append(rank(c, device.url, user_id="ann", k=5).json()["adaptation"])  # the device alone
    assert kinds == ["cloud-edit", "cloud-edit", "cloud-edit", "prototype-cache"] and editor.calls == 2
    assert graph.callees(ROUTE) == {"require_user", "Ranker.rank"}
    assert graph.callees("Ranker.rank") == STEPS | {"Ranker.catalogue"}
    assert graph.callers("Ranker.") <= {ROUTE, "Ranker.rank", "DeviceService.catalogue", None}  # nothing from below
    routes = {"_operator_routes.<locals>.cloud_switch", "_open_routes.<locals>.healthz", "_openapi.<locals>.openapi"}
    outside = {c for c in graph.callers("DeviceService.") if not (c or "").startswith("DeviceService.")}
    assert outside <= {None, "service_lifespan.<locals>.lifespan", *routes}  # the app and its routes only
    assert service.batcher.stats.requests == service.batcher.scorer.stats.requests == 4  # once per request
