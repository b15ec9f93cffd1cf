"""``persona serve``: the device and/or cloud ranking services (see docs/serving.md)."""

from __future__ import annotations

from cli import CliError, add_common
from serving.config import load_app_config
from serving.http_guards import is_loopback, is_wildcard
from serving.serve_config import API_KEY_ENV, OPERATOR_KEY_ENV, ServeConfig


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the device and/or cloud services (uvicorn, 127.0.0.1 by default)")
    add_common(p)
    p.add_argument("--role", choices=["device", "cloud", "all"], help="which service (default: serve.role)")
    p.add_argument("--cloud-url", help="the device's cloud service URL (default: serve.device.cloud_url)")
    p.add_argument("--host", help="bind address (default: serve.host)")
    p.add_argument("--port", type=int, help="device port (role device/all; default: serve.port)")
    p.add_argument("--cloud-port", type=int, help="cloud port (role cloud/all; default: serve.cloud_port)")
    p.add_argument("--workers", type=int, help="uvicorn worker processes (default: serve.workers)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from serving.server import serve
    from serving.web import setup_json_logging

    flags = {"role": args.role, "device.cloud_url": args.cloud_url, "host": args.host, "port": args.port,
             "cloud_port": args.cloud_port, "workers": args.workers}
    overrides = [f"serve.{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_app_config(args.config, [*args.overrides, *overrides])
    if cfg.serve.role == "cloud" and not cfg.serve.resolved_api_key():
        raise CliError(f"the cloud service needs an API key: set ${API_KEY_ENV} or serve.api_key=...")
    refuse_open_bind(cfg.serve)
    setup_json_logging()
    return serve(cfg)


def refuse_open_bind(s: ServeConfig) -> None:
    """Off loopback, every service started needs its credential, and a wildcard bind its host names
    (docs/security.md); on loopback a device without an operator key gets a random one."""
    if is_loopback(s.host):
        return
    where = f"refusing to serve on {s.host or '0.0.0.0'} (not loopback)"
    if s.role in ("cloud", "all") and not s.resolved_api_key():
        raise CliError(f"{where} without the cloud's API key: set serve.api_key or ${API_KEY_ENV}")
    if s.role in ("device", "all") and not s.device_operator_key():
        raise CliError(f"{where} without the device's operator key: set serve.operator_key or ${OPERATOR_KEY_ENV}")
    if is_wildcard(s.host) and s.http.allowed_hosts is None:
        raise CliError(f"{where} without host names: set serve.http.allowed_hosts=[name,...] (the Host clients send)")
