"""The OpenAPI 3 description of every route, and the offline /docs page (Swagger UI assets
from the swagger-ui-bundle package, never a CDN)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from . import __version__
from .schema import MAX_SEQ, MAX_TAB_ID, MAX_USER_ID_CHARS

DOCS_STATIC = "/docs/static"
# The swagger-ui-bundle files that _DOCS_PAGE loads, and nothing else of its dist.
DOCS_ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js")


def _error(description: str, codes: list[str], retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [{"$ref": "#/components/schemas/Error"}],
                    "properties": {"error": {"properties": {"code": {"enum": codes}}}},
                }
            }
        },
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "schema": {"type": "string"},
            }
        }
    return response


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REFUSALS = {
    "401": _error("a token is configured and this request lacks it", ["unauthorized"]),
    "403": _error("the browser Origin is not allowed", ["origin_not_allowed"]),
}

_COMPONENTS: dict[str, Any] = {
    "schemas": {
        "Chunk": {
            "type": "object",
            "required": ["user_id", "tab_id", "seq", "mime_type", "audio_b64"],
            "properties": {
                "user_id": {"type": "string", "minLength": 1, "maxLength": MAX_USER_ID_CHARS},
                "tab_id": {"type": "integer", "minimum": -MAX_TAB_ID, "maximum": MAX_TAB_ID},
                "seq": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                "mime_type": {"type": "string", "example": "audio/webm;codecs=opus"},
                "audio_b64": {
                    "type": "string",
                    "format": "byte",
                    "description": "the blob, standard base64; line breaks and missing "
                    "trailing padding are tolerated, anything else is a 400",
                },
                "chunk_start_seconds": {
                    "type": "number",
                    "nullable": True,
                    "description": "the client's own count; a hint, never used for timing",
                },
            },
            "additionalProperties": True,
        },
        "Word": {
            "type": "object",
            "required": ["word", "start_seconds", "end_seconds", "probability"],
            "properties": {
                "word": {"type": "string"},
                "start_seconds": {"type": "number", "minimum": 0},
                "end_seconds": {"type": "number", "minimum": 0},
                "probability": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
        "Segment": {
            "type": "object",
            "required": ["text", "start_seconds", "end_seconds", "confidence", "words"],
            "properties": {
                "text": {"type": "string", "minLength": 1},
                "start_seconds": {"type": "number", "minimum": 0},
                "end_seconds": {"type": "number", "minimum": 0},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "words": {"type": "array", "items": {"$ref": "#/components/schemas/Word"}},
            },
        },
        "Transcript": {
            "type": "object",
            "required": ["segments"],
            "properties": {
                "segments": {"type": "array", "items": {"$ref": "#/components/schemas/Segment"}},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string"},
                "error": {"type": "string", "nullable": True},
            },
            "additionalProperties": True,
        },
    },
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
}


def build_openapi() -> dict[str, Any]:
    stream_responses = {
        "200": _json(
            "words committed since the previous response of this session; also "
            "the answer to audio that cannot be decoded",
            {"$ref": "#/components/schemas/Transcript"},
        ),
        "400": _error(
            "the body is not a valid chunk",
            ["invalid_json", "missing_field", "invalid_field", "invalid_base64"],
        ),
        **_REFUSALS,
        "413": _error("the body is over max_request_bytes", ["request_too_large"]),
        "429": _error(
            "too many requests from this session, too many sessions of this user, or too "
            "many new sessions from this client address or token",
            ["rate_limited", "too_many_sessions", "session_start_rate_limited"],
            retry_after=True,
        ),
        "503": _error(
            "no new session can be taken now, or the model is not loaded",
            ["session_limit", "overloaded", "model_not_ready"],
            retry_after=True,
        ),
    }
    health = {"$ref": "#/components/schemas/Health"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "isweep-backend",
            "version": __version__,
            "description": "Real-time speech-to-text for the ISweep browser extension: "
            "WebM/Opus blobs in, once-only word-timed transcript out.",
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/asr/stream": {
                "post": {
                    "summary": "Send one recorder blob; get the words committed since last time",
                    "operationId": "asr_stream",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Chunk"}}
                        },
                    },
                    "responses": stream_responses,
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "operationId": "healthz",
                    "security": [],
                    "responses": {
                        "200": _json("alive", health),
                        "503": _json("the model failed to load", health),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: the model is loaded and warm",
                    "operationId": "readyz",
                    "responses": {
                        "200": _json("ready", health),
                        "503": _json("loading, failed, or degraded (a worker is down)", health),
                        **_REFUSALS,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_REFUSALS,
                    },
                }
            },
        },
        "components": _COMPONENTS,
    }


_DOCS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>isweep-backend API</title>
<link rel="stylesheet" href="{static}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script src="{static}/docs-init.js"></script>
</body></html>
"""
# validatorUrl: null, or Swagger UI would send the spec to its public validator.
_DOCS_INIT = (
    "window.ui = SwaggerUIBundle({url: '/openapi.json', dom_id: '#swagger-ui', "
    "validatorUrl: null});\n"
)


def swagger_ui_dir() -> Path:
    import swagger_ui_bundle  # type: ignore[import-untyped]

    return Path(swagger_ui_bundle.swagger_ui_path)


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build_openapi())


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=_DOCS_PAGE.format(static=DOCS_STATIC), content_type="text/html")


async def docs_init(request: web.Request) -> web.Response:
    # Served by us, not inline, so the page works under a strict Content-Security-Policy.
    return web.Response(text=_DOCS_INIT, content_type="application/javascript")


def _asset(path: Path) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    return serve


def add_docs_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs_page)
    app.router.add_get(f"{DOCS_STATIC}/docs-init.js", docs_init)
    # Only the two files the page loads: the package's own index.html and initializer
    # would point a visitor's browser at a spec on the internet.
    folder = swagger_ui_dir()
    for name in DOCS_ASSETS:
        app.router.add_get(f"{DOCS_STATIC}/{name}", _asset(folder / name))
