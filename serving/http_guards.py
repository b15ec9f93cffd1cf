"""What both services put in front of their routes against hostile browsers and clients (docs/security.md).

- **Host allow-list** (Starlette's ``TrustedHostMiddleware``): a request whose ``Host`` is not one of the service's
  names gets 400, so a page reached through DNS rebinding (``Host: attacker.example``) cannot drive the API.
- **CORS closed by default**: no ``Access-Control-Allow-Origin`` unless ``serve.http.cors_origins`` names origins.
- **Security headers on every answer**: ``nosniff``, no framing (``X-Frame-Options: DENY`` and CSP
  ``frame-ancestors 'none'``), no referrer, ``Cache-Control: no-store`` (answers are per user), and a CSP that
  allows nothing unless the response set its own (the demo page: its own script and style by hash).
- No ``Host`` in redirects: the apps are built with ``redirect_slashes=False`` and ``/docs`` is off by default
  (:func:`app_options`).
"""

from __future__ import annotations

import ipaddress

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from serving.serve_config import HttpConfig

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]
API_CSP = "default-src 'none'; frame-ancestors 'none'"
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def allowed_hosts(http: HttpConfig, bind_host: str) -> list[str]:
    """``serve.http.allowed_hosts``, else the loopback names plus a specific (non-wildcard) bind address."""
    if http.allowed_hosts is not None:
        return list(http.allowed_hosts)
    extra = [] if is_wildcard(bind_host) or bind_host in LOOPBACK_NAMES else [bind_host]
    return LOOPBACK_NAMES + extra


def app_options(http: HttpConfig) -> dict:
    """FastAPI constructor options: Swagger UI only when asked (it loads from a CDN), no slash redirects."""
    return {"docs_url": "/docs" if http.docs else None, "redoc_url": None, "redirect_slashes": False}


class SecurityHeaders:
    """Pure ASGI: the headers above on every HTTP answer; a response's own CSP wins over the API default."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in _HEADERS if k not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", API_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_http_guards(app: FastAPI, http: HttpConfig, bind_host: str) -> None:
    """Add CORS (only with origins), the host allow-list and the security headers (outermost) to ``app``."""
    if http.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=http.cors_origins, allow_methods=["GET", "POST", "PUT"],
            allow_headers=["authorization", "content-type", "x-api-key"],
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(http, bind_host), www_redirect=False)
    app.add_middleware(SecurityHeaders)
