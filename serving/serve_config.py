"""The ``serve:`` config section, in sections by who reads them: the process (role, addresses, keys, checkpoint) at
its top, ``serve.http`` (both services' HTTP layer), ``serve.device`` (the device service) and ``serve.cloud`` (the
cloud service)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from llm_cloud.distill import DistillConfig
from recsys.config import StrictConfig
from recsys.wire import Encoding

API_KEY_ENV = "PERSONA_API_KEY"
OPERATOR_KEY_ENV = "PERSONA_OPERATOR_KEY"


class HttpConfig(StrictConfig):
    """What both services' HTTP layer accepts (``serve.http``): hosts, origins, bodies, connections and their
    timeouts."""

    # Host headers answered (others: 400); None → the loopback names, plus the bind address if it is a specific one
    allowed_hosts: list[str] | None = None
    cors_origins: list[str] = Field(default_factory=list)  # browser origins allowed to call the API (none: closed)
    docs: bool = False  # serve Swagger UI at /docs (it loads its assets from a CDN; /openapi.json is always served)
    max_body_bytes: int = Field(1_048_576, ge=1024)  # larger request bodies get 413
    body_timeout_s: float = Field(5.0, gt=0)  # a request body not complete this long after its headers: 408, closed
    header_timeout_s: float = Field(10.0, gt=0)  # a connection with no complete request head this long: closed
    keepalive_timeout_s: float = Field(5.0, gt=0)  # an idle kept-alive connection: closed after this long
    max_connections: int = Field(4096, ge=16)  # open connections per worker; more are closed at once
    access_log: bool = True  # one JSON log line per request


class DeviceConfig(StrictConfig):
    """The device service (``serve.device``): its cloud and the wait for it, when it asks, its state on disk, its
    model runtime, batching, caches, and what one user may do."""

    cloud_url: str | None = None  # the device's cloud; role all → this process's cloud service
    # per served dataset by default (state_paths): None → <output_dir>/serve/<dataset>/events.db, .../prototypes.json
    db_path: str | None = None  # device event log (SQLite)
    prototype_cache: str | None = None  # the device's cached bank snapshot
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"  # FULL: an ack survives power loss too
    # what runs the device model: torch (recsys.runtime) or the torch-free runtime on its ONNX export (persona_device;
    # `onnx_dir`, default <checkpoint>/device-onnx, exported there at start when missing or older than the checkpoint)
    runtime: Literal["torch", "onnx"] = "torch"
    onnx_dir: str | None = None

    budget_ms: float = Field(50.0, gt=0)  # wait at most this long for a cloud edit while ranking
    catchup_timeout_s: float = Field(5.0, gt=0)  # a late edit request keeps going this long in the background
    cloud_retry_s: float = Field(2.0, ge=0)  # after a cloud failure, serve fallbacks this long before retrying
    breaker_window: int = Field(20, ge=1)  # the device's recent cloud answers the breaker looks at
    breaker_overruns: int = Field(10, ge=1)  # this many of them over budget count as a failure (cloud skipped)
    # when the device asks the cloud for a new edit (serving.request_policy): refresh = every refresh_every new
    # events or a new prototype/bank; drift = the request_rate share of events whose user state drifted most from
    # the state its adaptation was made for; random = each new event asks with probability request_rate
    request_policy: Literal["refresh", "drift", "random"] = "refresh"
    refresh_every: int = Field(5, ge=1)  # refresh: ask the cloud for a new edit every N new events of a user
    request_rate: float = Field(0.2, ge=0.0, le=1.0)  # drift / random: target share of new events that ask
    # drift / random: a user's cloud edit is served for at most this many of its new events while the policy does
    # not ask again; older, the device serves its gated bank / base head instead (None: until replaced)
    edit_max_age: int | None = Field(None, ge=1)
    prototypes_refresh_s: float = Field(60.0, gt=0)  # how often the device refetches the bank snapshot
    # serve a cached prototype's edit on its own (cloud slow / down, or the policy does not ask) only where the
    # cloud measured it beating the base head on held-out rows (the snapshot's cache_ok); false: every prototype's
    cache_gate: bool = True
    edit_cache_size: int = Field(10_000, ge=1)  # users whose cloud edit a device worker keeps
    edit_encoding: Encoding = "code"  # how the device asks for edits on the wire
    # (code: the window's per-layer code, decoded with the cached bank's decoder; dense fp32 until one is cached)
    max_batch: int = Field(64, ge=1, le=4096)  # rank requests per forward pass (1 = none)
    batch_wait_ms: float = Field(1.0, ge=0, le=100)  # a batch waits at most this long for requests on their way
    history_cache_users: int = Field(10_000, ge=0)  # users whose event history a device worker keeps in memory

    # what one user may do
    user_token_ttl_s: int = Field(86_400, ge=60, le=30 * 86_400)  # default lifetime of an issued user token
    max_clock_skew_s: float = Field(300.0, ge=0)  # event timestamps later than server time + this: 409
    max_unknown_items: int = Field(1000, ge=0)  # distinct item ids outside the catalogue a user may store
    user_rate_per_s: float = Field(20.0, gt=0)  # requests per second one user token may make (per worker; 429 past it)
    user_burst: int = Field(40, ge=1)  # ... in bursts of up to this many

    def state_paths(self, output_dir: str | Path, dataset: str) -> tuple[Path, Path]:
        """``(db_path, prototype_cache)``: the explicit paths, else per dataset under ``<output_dir>/serve/<dataset>/``.

        One event log per dataset: item tokens and user ids of one dataset mean nothing to another's model.
        """
        state = Path(output_dir) / "serve" / dataset
        return (Path(self.db_path) if self.db_path else state / "events.db",
                Path(self.prototype_cache) if self.prototype_cache else state / "prototypes.json")


class CloudConfig(StrictConfig):
    """The cloud service (``serve.cloud``): what it sends devices — the edit source, the teacher the distilled edit
    follows, the adapter and its bank — and how it batches and reloads them."""

    # distilled: the per-request edit distilled from the teacher (llm_cloud.distill_editor); adapter: the adapter +
    # prototype bank beside the checkpoint (or no edit without one); auto: distilled when there is a teacher that
    # knows more than the device (serve.cloud.teacher set, or two checkpoints or more by default), else adapter
    edit_source: Literal["auto", "adapter", "distilled"] = "auto"
    # checkpoint dirs, one item vocabulary (the device's); None → the main job's: every model's
    # <output_dir>/<dataset>/<model>/seed<k> for k in `seeds`, the dataset being the served checkpoint's
    teacher: list[str] | None = None
    distill: DistillConfig = Field(default_factory=DistillConfig)  # the solver (steps, lr, the edit's clip)
    adapter_dir: str | None = None  # adapter + prototype bank artifacts; None → beside the checkpoint
    # the bank learns from the traffic as `served-dyn` is evaluated (answered windows refine their prototypes or open
    # new ones, each history's newest item counts into the OOD score); published every N answers, a new version the
    # devices refetch (bank_publish_every: fewer refetches, a staler bank)
    dynamic_bank: bool = False
    bank_publish_every: int = Field(256, ge=1)
    bank_keep: int = Field(32, ge=1)  # published banks kept: a device caching one gets compact edits made with it
    max_batch: int = Field(64, ge=1, le=4096)  # edit requests per forward pass (1 = none)
    reload_poll_s: float = Field(2.0, ge=0)  # check editor artifacts for changes (0 = only /admin/reload)


class ServeConfig(StrictConfig):
    """Device and cloud services (``persona serve``): the process at the top, each service in its section."""

    role: Literal["device", "cloud", "all"] = "all"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # device service (role device / all)
    cloud_port: int = Field(8001, ge=0, le=65535)  # cloud service (role cloud / all)
    workers: int = Field(1, ge=1, le=64)  # uvicorn worker processes (role device / cloud)
    api_key: str | None = None  # cloud API key; None → $PERSONA_API_KEY (role all: a random one if unset)
    # the device's operator key (docs/security.md): issues user tokens, cuts the cloud, reads /metrics, and may act
    # for every user; None → $PERSONA_OPERATOR_KEY, else (role all) the cloud API key, else a random one on loopback
    operator_key: str | None = None
    checkpoint: str | None = None  # base checkpoint dir; None → <output_dir>/<dataset>/<model>/seed<seed>
    seed: int = 0  # which seed's checkpoint to serve when ``checkpoint`` is None
    http: HttpConfig = Field(default_factory=HttpConfig)
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    cloud: CloudConfig = Field(default_factory=CloudConfig)

    def resolved_api_key(self) -> str | None:
        return self.api_key or os.environ.get(API_KEY_ENV) or None

    def device_operator_key(self) -> str | None:
        """The device's operator key as configured: its own, else (role all, one operator) the cloud API key; None:
        not configured (:func:`serving.server.serve` generates one on loopback)."""
        own = self.operator_key or os.environ.get(OPERATOR_KEY_ENV) or None
        return own or (self.resolved_api_key() if self.role == "all" else None)
