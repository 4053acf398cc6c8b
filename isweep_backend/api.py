"""HTTP handlers: validate, hand the chunk to the session layer, shape the JSON answer.

This is the one place where pipeline errors become HTTP statuses.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .errors import InvalidRequest, ModelNotReady, Overloaded, RateLimited, SessionLimit
from .keys import METRICS, RUNTIME, SETTINGS
from .logging import session_hash
from .openapi import add_docs_routes
from .ratelimit import retry_after_header
from .schema import error_body, parse_chunk, segments_from_words
from .security import caller_of
from .settings import instance_name
from .timeline import to_seconds

log = structlog.get_logger("isweep_backend.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER = {"Retry-After": "2"}
# Names the replica on every answer, so session affinity behind a load balancer can be seen.
INSTANCE_HEADER = "X-Isweep-Instance"


def json_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(error_body(code, message), status=status, headers=headers)


async def asr_stream(request: web.Request) -> web.Response:
    # The whole answer, body upload and decoding included, fits the wait budget.
    arrived_at = asyncio.get_running_loop().time()
    answer_by = arrived_at + request.app[SETTINGS].response_wait_seconds
    runtime = request.app[RUNTIME]
    # While the model loads, chunks are accepted and buffered (their words come later);
    # only a model that failed to load refuses them.
    if runtime.error is not None or runtime.service is None:
        raise ModelNotReady(runtime.error or "the service is starting")
    body = await request.read()
    chunk = parse_chunk(body)
    structlog.contextvars.bind_contextvars(
        session=session_hash(chunk.user_id, chunk.tab_id), seq=chunk.seq
    )
    outcome = await runtime.service.registry.accept(
        chunk, answer_by, caller_of(request, request.app[SETTINGS]), arrived_at
    )
    segments = segments_from_words(outcome.words)
    log.info(
        "chunk_answered",
        arrival=outcome.arrival.value,
        blob_bytes=len(chunk.audio),
        new_audio_seconds=round(to_seconds(outcome.new_audio_samples), 3),
        decode_error=outcome.decode_error,
        segments=len(segments),
        words=len(outcome.words),
    )
    return web.json_response({"segments": segments})


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.error is not None:
        return web.json_response({"status": "failed", "error": runtime.error}, status=503)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    service = runtime.service
    if runtime.engine is None or service is None:
        status = "failed" if runtime.error else "loading"
        return web.json_response({"status": status, "error": runtime.error}, status=503)
    info = runtime.engine.info
    workers = service.scheduler.workers
    alive = service.scheduler.workers_alive()
    body = {
        "status": "ready",
        "model": info.name,
        "model_source": info.source,
        "device": info.device,
        "compute_type": info.compute_type,
        "beam_size": info.beam_size,
        "sessions": len(service.registry),
        "pass_workers": workers,
        "pass_workers_alive": alive,
        "instance": instance_name(request.app[SETTINGS]),
    }
    if alive < workers:
        # Recognition capacity is lost until the dead workers are replaced (a few seconds).
        error = f"{workers - alive} of {workers} pass workers are down; restarting"
        return web.json_response(body | {"status": "degraded", "error": error}, status=503)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    service = request.app[RUNTIME].service
    if service is not None:
        service.registry.update_buffer_gauges()
    resp = web.Response(body=generate_latest(m.registry))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.charset = "utf-8"
    return resp


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer, good or bad, is JSON, counted, and logged with a request id."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex[:16])
    started = time.perf_counter()
    route = _route_label(request)
    response: web.StreamResponse
    try:
        response = await handler(request)
    except InvalidRequest as exc:
        log.info("request_rejected", code=exc.code, reason=exc.message)
        response = json_error(400, exc.code, exc.message)
    except SessionLimit as exc:
        log.warning("session_limit_reached", reason=str(exc))
        response = json_error(503, "session_limit", str(exc), **RETRY_AFTER)
    except Overloaded as exc:
        response = json_error(503, "overloaded", str(exc), **RETRY_AFTER)
    except RateLimited as exc:
        log.info("request_rejected", code=exc.code)
        retry = RETRY_AFTER
        if exc.retry_after_seconds is not None:
            retry = {"Retry-After": retry_after_header(exc.retry_after_seconds)}
        response = json_error(429, exc.code, str(exc), **retry)
    except ModelNotReady as exc:
        response = json_error(503, "model_not_ready", str(exc), **RETRY_AFTER)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_request_bytes
        request.app[METRICS].requests_shed.inc("too_large")
        log.info("request_rejected", code="request_too_large")
        response = json_error(413, "request_too_large", f"the body is over {limit} bytes")
    except web.HTTPException as exc:
        response = json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        for name in ("Allow",):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    except Exception:
        log.exception("request_failed")
        response = json_error(500, "internal_error", "the server failed to answer this request")
    response.headers[INSTANCE_HEADER] = instance_name(request.app[SETTINGS])
    m = request.app[METRICS]
    m.requests.labels(route, f"{response.status // 100}xx").inc()
    m.request_duration.labels(route).observe(time.perf_counter() - started)
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/asr/stream", asr_stream)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    add_docs_routes(app)
