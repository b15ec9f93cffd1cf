"""OpenAI-compatible ``POST /v1/embeddings`` served from the configured backbone.

``embeddings_router(backbone)`` is an ``APIRouter`` the cloud app mounts; ``create_embeddings_app``
wraps it in a tiny FastAPI app (tests, or a stand-alone embeddings server). Requests and responses
follow OpenAI's embeddings API, so the ``openai-http`` backbone (and any OpenAI client) talks to it
exactly as to vLLM: text or token-id input (decoded with the backbone's tokenizer), ``model`` one of the
served names (else 404). The API key is checked before the body is read. Every error, including the
shared middleware's (413), uses OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape; a string
that is not valid Unicode (a lone surrogate such as JSON ``"\\ud800"``) is a 400 naming its parameter.

``dimensions`` works as for OpenAI's text-embedding-3 models: any ``1 <= dimensions <= width`` returns the
first ``dimensions`` components of each vector, L2-renormalised; a larger value is a 400. The schema states
``minimum: 1`` and, when the backbone's width is known as the router is built, ``maximum: width``.
"""

import base64
import json
import threading
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model
from starlette.exceptions import HTTPException

from llm_cloud.backbones import Backbone, BackboneError
from llm_cloud.backbones.config import OpenAIHTTPConfig
from serving.schemas import StrictInt
from serving.web import api_key_dependency, key_first_route

MAX_INPUTS = 2048  # OpenAI's limit per request
PATH = "/v1/embeddings"
DEFAULT_MODEL = OpenAIHTTPConfig().model  # the packaged default backbone, as the openai-http client asks for it

TokenIds = list[Annotated[StrictInt, Field(ge=0)]]  # JSON integers (3 or 3.0, as JSON Schema's integer)
Input = str | list[str] | TokenIds | list[TokenIds]


# a character that is not white space to Python's str.strip() (the route's test for a blank text), spelt for JSON
# Schema's ECMAScript regexes too: their ``\S`` would count U+001C..U+001F and U+0085 as text and U+FEFF as space
NOT_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def _input_schema(vocab: int | None = None) -> dict:
    """What ``input`` may be (blank texts, empty lists and unknown token ids get 400, as documented)."""
    text = {"type": "string", "pattern": NOT_BLANK}
    token = {"type": "integer", "minimum": 0, **({"maximum": vocab - 1} if vocab else {})}
    tokens = {"type": "array", "items": token, "minItems": 1}
    many = {"minItems": 1, "maxItems": MAX_INPUTS}
    branches = [text, {"type": "array", "items": text, **many}, tokens, {"type": "array", "items": tokens, **many}]
    return {"anyOf": branches,
            "description": "text, texts, token ids or lists of token ids (decoded with the model's tokenizer)"}


def _dimensions_schema(dim: int | None = None) -> dict:
    """What ``dimensions`` may be: 1 up to the model's width (stated as ``maximum`` when known)."""
    bounds = {"type": "integer", "minimum": 1, **({"maximum": dim} if dim else {})}
    width = f"{dim}, the model's width" if dim else "the model's width (larger: 400)"
    return {"anyOf": [bounds, {"type": "null"}], "default": None,
            "description": f"return the first `dimensions` components, L2-renormalised; 1 to {width}"}


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: Annotated[Input, WithJsonSchema(_input_schema())]
    model: str | None = Field(None, description="a served model name (see GET /healthz); omitted: the served one")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[StrictInt | None, WithJsonSchema(_dimensions_schema())] = Field(None, ge=1)
    user: str | None = None


def describe_backbone(schema: dict, backbone: Backbone) -> dict:
    """``schema`` (an app's OpenAPI dict) with ``EmbeddingsRequest`` stating ``backbone``'s token-id range and width:
    for an app whose backbone is built lazily, called when the schema is first asked for (that builds it)."""
    vocab = len(backbone.tokenizer) if backbone.tokenizer is not None else None
    props = schema["components"]["schemas"]["EmbeddingsRequest"]["properties"]
    props["input"] = {**props["input"], **_input_schema(vocab)}
    props["dimensions"] = {**props["dimensions"], **_dimensions_schema(backbone.dim)}
    return schema


def _request_model(backbone: Backbone) -> type[EmbeddingsRequest]:
    """:class:`EmbeddingsRequest` whose schema names this backbone's token-id range and width."""
    vocab = len(backbone.tokenizer) if backbone.tokenizer is not None else None
    return create_model(
        "EmbeddingsRequest", __base__=EmbeddingsRequest,
        input=(Annotated[Input, WithJsonSchema(_input_schema(vocab))], ...),
        dimensions=(Annotated[StrictInt | None, WithJsonSchema(_dimensions_schema(backbone.dim))], Field(None, ge=1)),
    )


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(..., description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


RESPONSES = {
    200: {"model": EmbeddingsResponse},
    **{status: {"model": ErrorBody, "description": what} for status, what in [
        (400, "invalid input (empty or non-Unicode text, unknown token id, `dimensions` above the model's width, "
              "unreadable body); `param` names it"),
        (401, "missing or wrong API key"),
        (404, "`model` is not served here"),
        (408, "the request body did not arrive within serve.http.body_timeout_s"),
        (413, "request body larger than serve.http.max_body_bytes"),
        (422, "the body does not match the schema; `param` names the field"),
    ]},
}
_KINDS = {401: "authentication_error", 404: "not_found_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.kind = kind or _KINDS.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _from_validation(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first["loc"] if p != "body"]
    where = ".".join(loc)
    return APIError(422, f"'{where}': {first['msg']}" if where else first["msg"], loc[0] if loc else None)


def _from_http(exc: HTTPException) -> APIError:
    detail = exc.detail.get("message", exc.detail) if isinstance(exc.detail, dict) else exc.detail
    return APIError(exc.status_code, str(detail), headers=getattr(exc, "headers", None))


def _texts(req: EmbeddingsRequest, backbone: Backbone) -> tuple[list[str], int | None]:
    """The input as texts, and its token count when it came as token ids."""
    inp = req.input
    if isinstance(inp, str) or not inp or isinstance(inp[0], str):
        return ([inp] if isinstance(inp, str) else list(inp)), None
    seqs = [inp] if isinstance(inp[0], int) else inp
    if any(not s for s in seqs):
        raise APIError(400, "'input' has an empty token list", "input")
    try:
        texts = backbone.decode_tokens(seqs)
    except BackboneError as exc:
        raise APIError(400, f"'input' holds token ids, which cannot be used here: {exc}", "input") from exc
    # only special tokens (e.g. [CLS] [SEP]): embed their text rather than nothing
    texts = [t if t.strip() else backbone.tokenizer.decode(ids) for t, ids in zip(texts, seqs)]
    return texts, sum(map(len, seqs))


def _check_unicode(value: str | None, where: str, param: str) -> None:
    """A 400 naming ``param`` when ``value`` cannot be encoded (a lone UTF-16 surrogate, as JSON allows)."""
    try:
        (value or "").encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ascii(value[exc.start])  # escaped: the message itself must stay encodable
        raise APIError(400, f"'{where}' is not valid Unicode: lone surrogate {bad} at position {exc.start}",
                       param) from exc


def _check_fields(req: EmbeddingsRequest) -> None:
    for field in ("model", "user"):
        _check_unicode(getattr(req, field), field, field)


def _validate(req: EmbeddingsRequest, texts: list[str], backbone: Backbone) -> None:
    """The texts first (no model is loaded to refuse bad text), then ``dimensions`` against the width."""
    if not texts:
        raise APIError(400, "'input' must not be empty", "input")
    if len(texts) > MAX_INPUTS:
        raise APIError(400, f"'input' has {len(texts)} items, at most {MAX_INPUTS} allowed", "input")
    for i, text in enumerate(texts):
        where = "input" if isinstance(req.input, str) else f"input[{i}]"
        if not text.strip():
            raise APIError(400, f"'{where}' is an empty string", "input")
        _check_unicode(text, where, "input")
    if req.dimensions is not None and backbone.dim is not None:
        _check_dimensions(req.dimensions, backbone.dim)


def _check_dimensions(dimensions: int, dim: int) -> None:
    if dimensions > dim:
        raise APIError(400, f"'dimensions' {dimensions} is above this model's width {dim}", "dimensions")


def _fit_dimensions(emb: np.ndarray, dimensions: int | None) -> np.ndarray:
    """OpenAI's text-embedding-3 ``dimensions``: the first ``dimensions`` components, L2-renormalised."""
    if dimensions is None:
        return emb
    _check_dimensions(dimensions, emb.shape[1])  # the width of a backbone that only knows it after encoding
    cut = emb[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.where(norms > 0, norms, 1)


def _route_class(check):
    """Routes that check the API key before FastAPI reads the body and answer every error OpenAI-shaped."""

    class OpenAIRoute(key_first_route(check) if check is not None else APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()  # with a key: checked before the body

            async def openai_route(request):
                try:
                    return await handler(request)
                except APIError as exc:
                    return exc.response()
                except RequestValidationError as exc:
                    return _from_validation(exc).response()
                except HTTPException as exc:
                    return _from_http(exc).response()

            return openai_route

    return OpenAIRoute


def embeddings_router(
    backbone: Backbone, model_name: str | None = None, api_key: str | None = None, describe: bool = True
) -> APIRouter:
    """``POST /v1/embeddings`` for ``backbone``, answering to ``model_name`` (default ``all-MiniLM-L6-v2``) or
    the backbone's name; with ``api_key`` set, requests need ``Bearer <api_key>`` (or ``X-API-Key``).
    ``describe``: the schema gives the backbone's width and token-id range (False: a backbone built lazily)."""
    check = api_key_dependency(lambda: api_key) if api_key is not None else None
    router = APIRouter(route_class=_route_class(check))
    lock = threading.Lock()  # one encode at a time: torch already uses every core for one batch
    served_name = model_name or DEFAULT_MODEL
    served = {served_name, backbone.name}
    Request = _request_model(backbone) if describe else EmbeddingsRequest  # not described: 1 ≤ dimensions only

    # the dependency documents the key in OpenAPI (the route class has already checked it)
    @router.post(PATH, responses=RESPONSES, dependencies=[Depends(check)] if check else [],
                 summary="OpenAI-compatible embeddings of texts or token ids")
    def create_embeddings(req: Request):  # the annotation is evaluated here (no __future__ import)
        _check_fields(req)
        if req.model is not None and req.model not in served:
            raise APIError(404, f"The model `{req.model}` does not exist; served: {sorted(served)}", "model",
                           code="model_not_found")
        texts, n_tokens = _texts(req, backbone)
        _validate(req, texts, backbone)
        try:
            with lock:
                emb = backbone.encode(texts)
        except BackboneError as exc:
            raise APIError(500, f"backbone failed: {exc}") from exc
        emb = _fit_dimensions(emb, req.dimensions)
        b64 = req.encoding_format == "base64"
        data = [
            {"object": "embedding", "index": i,
             "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode() if b64 else row.tolist()}
            for i, row in enumerate(emb)
        ]
        # token input: its length; text: whitespace words (an honest, cheap usage count)
        tokens = n_tokens if n_tokens is not None else int(sum(len(t.split()) for t in texts))
        return {
            "object": "list",
            "data": data,
            "model": req.model or served_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return router


class OpenAIErrorBodies:
    """Pure ASGI, outside the shared middleware: its error bodies on ``path`` (413, bad Content-Length, 408)
    rewritten into OpenAI's shape; bodies already in it pass unchanged."""

    def __init__(self, app, path: str = PATH):
        self.app, self.path = app, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        held: dict = {}

        async def send_wrapper(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held.update(start=message, body=b"")
                return
            if message["type"] != "http.response.body" or "start" not in held:
                return await send(message)
            held["body"] += message.get("body", b"")
            if message.get("more_body"):
                return
            start = held.pop("start")
            body = _openai_shaped(start["status"], held["body"])
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_wrapper)


def _openai_shaped(status: int, body: bytes) -> bytes:
    """An error body in OpenAI's shape (from our ``{"message", "detail"}`` bodies or plain text)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body.decode("utf-8", "replace")
    if isinstance(parsed, dict) and "error" in parsed:
        return body
    message = (parsed.get("message") or str(parsed.get("detail"))) if isinstance(parsed, dict) else str(parsed)
    return json.dumps(APIError(status, message).body()).encode()


def create_embeddings_app(backbone: Backbone, model_name: str | None = None, api_key: str | None = None) -> FastAPI:
    """A FastAPI app serving only ``/v1/embeddings`` (and ``/healthz``) from ``backbone``."""
    app = FastAPI(title="Persona embeddings")
    app.include_router(embeddings_router(backbone, model_name, api_key))

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": model_name or DEFAULT_MODEL, "dim": backbone.dim}

    return app


__all__ = ["EmbeddingsRequest", "OpenAIErrorBodies", "create_embeddings_app", "embeddings_router"]
