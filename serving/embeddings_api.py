"""OpenAI-compatible ``POST /v1/embeddings`` served from the configured backbone.

``embeddings_router(backbone)`` is an ``APIRouter`` the cloud app mounts; ``create_embeddings_app``
wraps it in a tiny FastAPI app (tests, or a stand-alone embeddings server). Requests and responses
follow OpenAI's embeddings API, so the ``openai-http`` backbone (and any OpenAI client) talks to it
exactly as to vLLM. Errors use OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape.
"""

from __future__ import annotations

import base64
import hmac
import threading

from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llm_cloud.backbones import Backbone, BackboneError

MAX_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str | None = None
    encoding_format: str = "float"  # "float" | "base64"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}
        return JSONResponse(body, status_code=self.status)


def _validate(req: EmbeddingsRequest, dim: int | None) -> list[str]:
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts:
        raise APIError(400, "'input' must not be empty", "input")
    if len(texts) > MAX_INPUTS:
        raise APIError(400, f"'input' has {len(texts)} items, at most {MAX_INPUTS} allowed", "input")
    for i, text in enumerate(texts):
        if not text.strip():
            raise APIError(400, f"'input[{i}]' is an empty string", "input")
    if req.encoding_format not in ("float", "base64"):
        raise APIError(400, "'encoding_format' must be 'float' or 'base64'", "encoding_format")
    if req.dimensions is not None and dim is not None and req.dimensions != dim:
        raise APIError(400, f"'dimensions' {req.dimensions} is not supported; this model returns {dim}", "dimensions")
    return texts


def embeddings_router(backbone: Backbone, model_name: str | None = None, api_key: str | None = None) -> APIRouter:
    """``POST /v1/embeddings`` for ``backbone``; with ``api_key`` set, requests need ``Bearer <api_key>``."""
    router = APIRouter()
    lock = threading.Lock()  # one encode at a time: torch already uses every core for one batch
    served_name = model_name or backbone.name

    @router.post("/v1/embeddings")
    def create_embeddings(req: EmbeddingsRequest, authorization: str | None = Header(None)):
        try:
            if api_key is not None and not hmac.compare_digest(authorization or "", f"Bearer {api_key}"):
                raise APIError(401, "invalid or missing API key", None, "authentication_error")
            texts = _validate(req, backbone.dim)
            try:
                with lock:
                    emb = backbone.encode(texts)
            except BackboneError as exc:
                raise APIError(500, f"backbone failed: {exc}", None, "server_error") from exc
        except APIError as exc:
            return exc.response()
        b64 = req.encoding_format == "base64"
        data = [
            {"object": "embedding", "index": i,
             "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode() if b64 else row.tolist()}
            for i, row in enumerate(emb)
        ]
        tokens = int(sum(len(t.split()) for t in texts))  # whitespace words: an honest, cheap usage count
        return {
            "object": "list",
            "data": data,
            "model": req.model or served_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return router


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first["loc"] if p != "body"]
    param = ".".join(loc) or None
    return APIError(422, f"'{param}': {first['msg']}" if param else first["msg"], param).response()


def create_embeddings_app(backbone: Backbone, model_name: str | None = None, api_key: str | None = None) -> FastAPI:
    """A FastAPI app serving only ``/v1/embeddings`` (and ``/healthz``) from ``backbone``."""
    app = FastAPI(title="Persona embeddings")
    app.include_router(embeddings_router(backbone, model_name, api_key))
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": model_name or backbone.name, "dim": backbone.dim}

    return app


__all__ = ["EmbeddingsRequest", "create_embeddings_app", "embeddings_router"]
