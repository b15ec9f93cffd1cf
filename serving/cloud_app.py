"""The cloud service: edits for devices, the prototype bank snapshot, embeddings; API key on all but health.

The editor is chosen by ``serve.cloud.edit_source`` (:func:`edit_source`): the edit distilled from a teacher
(:class:`llm_cloud.distill_editor.DistilledEditor`) or the adapter + prototype bank
(:func:`llm_cloud.editor.load_editor`); it is held in one immutable :class:`CloudState`. A reload
(``POST /admin/reload``, or a changed file in the checkpoint, adapter or teacher dirs, polled every
``serve.cloud.reload_poll_s``) builds the new state in a thread and swaps the reference,
so requests in flight finish on the state they started with and none is dropped. Concurrent edit requests
are answered together, one forward pass per batch (:mod:`serving.edit_batcher`, up to ``serve.cloud.max_batch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from fastapi.responses import PlainTextResponse, Response

from llm_cloud.backbones import Backbone, BackboneConfig, build_backbone
from llm_cloud.distill_editor import DistilledEditor
from llm_cloud.editor import EditAsk, Editor, load_editor
from persona_device.wire import unpack
from recsys import run_layout
from recsys.checkpoint import Loaded, checkpoint_reader
from recsys.wire import EditPayload, PrototypeSnapshot
from serving.config import AppConfig
from serving.edit_batcher import EditBatcher
from serving.embeddings_api import OpenAIErrorBodies, describe_backbone, embeddings_router
from serving.metrics import Metrics
from serving.schemas import AUTH_ERRORS, ERRORS, EditRequest, Health
from serving.web import (
    api_key_dependency,
    field_error,
    install_outer_layers,
    key_first_route,
    metrics_response,
    service_app,
)

log = logging.getLogger(__name__)

EditorFactory = Callable[[], Editor]


@dataclass
class CloudState:
    editor: Editor
    token_to_id: dict[str, int]
    model: str
    dataset: str
    n_items: int
    dim: int
    _json: tuple[str, bytes] | None = None  # the snapshot's JSON, for its version

    @property
    def snapshot(self) -> PrototypeSnapshot:
        """The editor's current bank (a dynamic bank publishes new versions as it learns)."""
        return self.editor.snapshot()

    def snapshot_json(self) -> tuple[str, bytes]:
        """``(version, JSON body)`` of the current snapshot, serialised once per version."""
        snap = self.editor.snapshot()
        if self._json is None or self._json[0] != snap.version:
            self._json = (snap.version, snap.model_dump_json().encode())
        return self._json


class CloudService:
    """Loads the checkpoint's vocabulary and the editor; reloads both when their files change."""

    def __init__(self, cfg: AppConfig, checkpoint_dir: Path, editor_factory: EditorFactory | None = None):
        self.cfg, self.s, self.c = cfg, cfg.serve, cfg.serve.cloud
        self.checkpoint_dir = Path(checkpoint_dir)
        # default: the artifacts `persona adapter` writes beside the checkpoint (base editor when absent)
        self.adapter_dir = (
            Path(self.c.adapter_dir) if self.c.adapter_dir else run_layout.adapter_dir(self.checkpoint_dir)
        )
        self._factory = editor_factory
        self.metrics = Metrics("cloud")
        self.batcher = EditBatcher(self.c.max_batch, self.metrics.edit_batch.observe)
        self._reload_lock: asyncio.Lock | None = None
        self._fingerprint = self._files_fingerprint()
        self.state = self._build_state()
        self._watcher: asyncio.Task | None = None

    def _build_state(self) -> CloudState:
        read = checkpoint_reader()  # the device's checkpoint is loaded once, however many parts read it
        model, meta, tokens = read(self.checkpoint_dir)
        dim = model.head.dim
        editor = self._factory() if self._factory else self._load_editor(dim, read)
        t2i = {str(t): i for i, t in enumerate(np.asarray(tokens)) if i > 0}
        return CloudState(
            editor,
            t2i,
            meta.model,
            meta.dataset,
            model.n_items - 1,
            dim,
        )

    def _load_editor(self, dim: int, read: Callable[[Path], Loaded]) -> Editor:
        teachers = teacher_dirs(self.cfg, self.checkpoint_dir)
        source = edit_source(self.cfg, teachers)
        log.info("cloud edit source", extra={"source": source, "teacher": [str(t) for t in teachers]})
        if source == "distilled":
            return DistilledEditor.load(self.checkpoint_dir, teachers, self.c.distill, read)
        return load_editor(self.checkpoint_dir, dim, self.adapter_dir, self.c.dynamic_bank, self.c.bank_publish_every,
                           self.c.bank_keep, read)  # fmt: skip

    def _watched_dirs(self) -> list[Path]:
        """The checkpoint dir, and the teacher's dirs unless the adapter is the set source (``auto`` watches them:
        a second checkpoint turns the distilled edit on)."""
        teachers = [] if self.c.edit_source == "adapter" else teacher_dirs(self.cfg, self.checkpoint_dir)
        return [self.checkpoint_dir, *teachers]

    def _files_fingerprint(self) -> tuple:
        files = [p for d in self._watched_dirs() for p in d.glob("*") if p.is_file()]
        if self.adapter_dir is not None and self.adapter_dir.is_dir():
            files += [p for p in self.adapter_dir.rglob("*") if p.is_file()]
        out = []
        for p in sorted(files):
            with contextlib.suppress(OSError):
                st = p.stat()
                out.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(out)

    async def reload(self) -> CloudState:
        """Build a new state off the event loop and swap it in; the old one serves until then."""
        async with self._reload_lock or asyncio.Lock():
            fingerprint = self._files_fingerprint()
            try:
                state = await asyncio.to_thread(self._build_state)
            except Exception:
                self.metrics.reloads.labels("error").inc()
                log.exception("reload failed; keeping version %s", self.state.editor.version)
                raise
            self.state, self._fingerprint = state, fingerprint
            self.metrics.reloads.labels("ok").inc()
            log.info("editor reloaded", extra={"version": state.editor.version, "prototypes": state.snapshot.size})
            return state

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.c.reload_poll_s)
            if self._files_fingerprint() != self._fingerprint:
                with contextlib.suppress(Exception):
                    await self.reload()

    async def start(self) -> None:
        self._reload_lock = asyncio.Lock()  # bound to the serving loop
        if self.c.reload_poll_s > 0:
            self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    async def edit(self, req: EditRequest) -> EditPayload:
        state = self.state
        ids = [state.token_to_id[t] for t in req.items if t in state.token_to_id]
        user_state = None if req.state is None else device_state(req.state, state.dim)
        return await self.batcher.edit(state.editor, EditAsk(ids, req.encoding, req.bank_version, user_state))

    def health(self) -> Health:
        st = self.state
        return Health(
            service="cloud",
            model=st.model,
            dataset=st.dataset,
            n_items=st.n_items,
            version=st.editor.version,
            prototypes=st.snapshot.size,
        )


def device_state(packed: str, dim: int) -> np.ndarray:
    """The user state a device sent (base64 float32, ``dim`` values); a 422 naming ``state`` when it is not one."""
    try:
        values = unpack(packed, "<f4", (dim,))
    except ValueError as exc:
        raise field_error("state", f"must be base64 of {dim} little-endian float32 values ({exc})") from exc
    if not np.isfinite(values).all():
        raise field_error("state", "must hold finite values only")
    return values


def teacher_dirs(cfg: AppConfig, checkpoint_dir: Path) -> list[Path]:
    """``serve.cloud.teacher``, else the main job's checkpoints of the served checkpoint's dataset: every model's
    ``<output_dir>/<dataset>/<model>/seed<k>`` for k in ``seeds`` that holds a complete checkpoint."""
    if cfg.serve.cloud.teacher is not None:
        return [Path(p) for p in cfg.serve.cloud.teacher]
    mark = Path(checkpoint_dir) / run_layout.CHECKPOINT_MARK
    if not mark.is_file():
        return []
    dataset = yaml.safe_load(mark.read_text())["dataset"]
    return run_layout.main_job_checkpoints(cfg.output_dir, dataset, cfg.seeds)


def edit_source(cfg: AppConfig, teachers: list[Path]) -> str:
    """``serve.cloud.edit_source``; ``auto``: ``distilled`` when the teacher knows more than the device — it was set
    (``serve.cloud.teacher``), or the default one has two checkpoints or more (one of them is the device's own) —
    else ``adapter``."""
    source = cfg.serve.cloud.edit_source
    if source != "auto":
        return source
    return "distilled" if cfg.serve.cloud.teacher is not None or len(teachers) >= 2 else "adapter"


class LazyBackbone(Backbone):
    """The configured backbone, built on the first embeddings request (the cloud starts without it)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__(batch_size=cfg.batch_size, progress=False)
        self.cfg, self.name = cfg, cfg.name
        self._inner: Backbone | None = None
        self._lock = threading.Lock()

    def inner(self) -> Backbone:
        with self._lock:
            if self._inner is None:
                self._inner = build_backbone(self.cfg)
            return self._inner

    @property
    def key(self) -> str:
        return self.inner().key

    @property
    def dim(self) -> int | None:
        return self.inner().dim

    @property
    def tokenizer(self):
        return self.inner().tokenizer

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.inner().encode(texts)

    def encode(self, texts) -> np.ndarray:
        return self.inner().encode(texts)


DESCRIPTION = ("Edits and prototype banks for Persona devices; OpenAI-compatible embeddings. Every route but "
               "/healthz needs `Authorization: Bearer <key>` or `X-API-Key: <key>`.")


def create_cloud_app(service: CloudService, api_key: str, backbone: Backbone | None = None) -> FastAPI:
    """The cloud FastAPI app; ``backbone`` defaults to the configured one, built lazily."""
    app = service_app(service, "Persona cloud", DESCRIPTION)
    check = api_key_dependency(lambda: api_key)
    keyed = APIRouter(route_class=key_first_route(check))
    _keyed_routes(keyed, service, [Depends(check)])  # the dependency documents the key; the route class checks it
    app.include_router(keyed)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return service.health()

    backbone = backbone or LazyBackbone(service.cfg.backbone)
    app.include_router(embeddings_router(backbone, service.cfg.backbone.served_name(), api_key, describe=False))

    def openapi() -> dict:  # the schema states the backbone's width and token ids (the first call builds it)
        if app.openapi_schema is None:
            app.openapi_schema = describe_backbone(FastAPI.openapi(app), backbone)
        return app.openapi_schema

    app.openapi = openapi
    # OpenAIErrorBodies outside: the body-size middleware's 413s on /v1/embeddings in OpenAI's shape
    return install_outer_layers(app, service, outer=(OpenAIErrorBodies, {}))


def _keyed_routes(keyed: APIRouter, service: CloudService, auth: list) -> None:
    """Edits, the bank snapshot, reload and metrics: the API key only."""
    unauthorized = {**AUTH_ERRORS, **ERRORS}

    @keyed.post("/v1/edits", response_model=EditPayload, dependencies=auth, responses=unauthorized,
                response_model_exclude_none=True,  # an absent field is its default (None): fewer bytes on the wire
                summary="an edit of the device head for a recent item history")  # fmt: skip
    async def edits(body: EditRequest) -> EditPayload:
        return await service.edit(body)

    @keyed.get("/v1/prototypes", response_model=PrototypeSnapshot, dependencies=auth,
               responses={**unauthorized, 304: {"description": "the device's cached version is current"}},
               summary="the prototype bank snapshot (ETag = version)")  # fmt: skip
    async def prototypes(if_none_match: str | None = Header(None)):
        version, body = service.state.snapshot_json()
        etag = f'"{version}"'
        if if_none_match is not None and if_none_match.strip() == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type="application/json", headers={"ETag": etag})

    @keyed.post("/admin/reload", dependencies=auth, responses=unauthorized, summary="reload editor and prototypes now")
    async def reload() -> dict[str, str | int]:
        try:
            st = await service.reload()
        except Exception as exc:  # noqa: BLE001 - reported, the old state keeps serving
            raise HTTPException(
                503, f"reload failed ({type(exc).__name__}: {exc}); still serving {service.state.editor.version}"
            ) from exc
        return {"version": st.editor.version, "prototypes": st.snapshot.size}

    @keyed.get("/metrics", dependencies=auth, responses=unauthorized, response_class=PlainTextResponse)
    async def metrics():
        return metrics_response(service.metrics)
