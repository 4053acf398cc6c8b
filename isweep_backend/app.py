"""create_app(settings) -> web.Application: routes, the app's parts, start-up and shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import structlog
from aiohttp import web

from .api import add_routes, error_middleware
from .engine import Engine
from .keys import DECODE_EXECUTOR, METRICS, PASS_EXECUTOR, RUNTIME, SETTINGS, Runtime, Service
from .metrics import Metrics
from .registry import SessionRegistry
from .scheduler import PassScheduler
from .security import auth_middleware, cors_headers_on_every_answer, cors_middleware
from .session import SessionContext
from .settings import Settings, parallelism

log = structlog.get_logger("isweep_backend.app")
# SIGTERM to exit, within Docker's 10 s stop grace: passes in flight get PASS_GRACE to finish
# (queued ones are dropped at once, their requests answer); then requests still in flight get
# REQUEST_GRACE to answer; then the process exits (`__main__` waits EXIT_GRACE at most for a
# pass thread that outlived its grace). 5 + 2 + 1 = 8 s, the bound the README states.
SHUTDOWN_PASS_GRACE_SECONDS = 5.0
SHUTDOWN_REQUEST_GRACE_SECONDS = 2.0
SHUTDOWN_EXIT_GRACE_SECONDS = 1.0
SHUTDOWN_BOUND_SECONDS = 8.0
# One decode thread for all sessions. Each blob's work is bounded (audio/budget.py), so a
# hostile blob holds it for tens of milliseconds at most, and a session that keeps sending
# such blobs is no longer decoded. More threads gain nothing reliable: demuxing is
# Python and holds the GIL, so a healthy blob decoded beside a hostile one waits for the GIL
# at each of its calls into FFmpeg instead of waiting in the queue (bench/hostile_blobs.py
# --queue measures both).
DECODE_THREADS = 1


def create_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """The whole service. Pass a loaded `engine` to share one model between apps (tests);
    otherwise the model loads in the background: chunks are accepted and buffered meanwhile,
    and /readyz turns 200 when it is warm."""
    app = web.Application(
        client_max_size=settings.max_request_bytes,
        # Outermost first: every answer, refusals included, is JSON, counted and logged.
        middlewares=[error_middleware, cors_middleware(settings), auth_middleware(settings)],
    )
    app.on_response_prepare.append(cors_headers_on_every_answer(settings))
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[RUNTIME] = Runtime()
    add_routes(app)
    app[METRICS].init_routes(r.canonical for r in app.router.resources())
    app.on_shutdown.append(_shut_down_passes)
    app.cleanup_ctx.append(_executors)
    app.cleanup_ctx.append(_pipeline_ctx(engine))
    return app


async def _shut_down_passes(app: web.Application) -> None:
    # Called once the listening socket is closed, before aiohttp waits for the requests in
    # flight: stopping the passes first is what lets those requests answer promptly.
    service = app[RUNTIME].service
    log.info("shutdown_started", sessions=len(service.registry) if service is not None else 0)
    if service is not None:
        await service.scheduler.stop(SHUTDOWN_PASS_GRACE_SECONDS)


async def _executors(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[PASS_EXECUTOR] = ThreadPoolExecutor(
        parallelism(settings)[0], thread_name_prefix="isweep-pass"
    )
    app[DECODE_EXECUTOR] = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="isweep-decode")
    yield
    # Never wait here: that would block the event loop. A pass still running finishes on its
    # thread; `__main__` bounds how long the process waits for it.
    app[PASS_EXECUTOR].shutdown(wait=False, cancel_futures=True)
    app[DECODE_EXECUTOR].shutdown(wait=False, cancel_futures=True)


def _pipeline_ctx(
    preloaded: Engine | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        settings = app[SETTINGS]
        metrics = app[METRICS]
        scheduler = PassScheduler(
            app[PASS_EXECUTOR],
            metrics,
            parallelism(settings)[0],
            settings.min_pass_audio_seconds,
            settings.overload_pass_cycle_seconds,
        )
        # Until the model says otherwise: a forced language, else detect once per session.
        language = None if settings.language == "auto" else settings.language
        context = SessionContext(settings, metrics, app[DECODE_EXECUTOR], scheduler)
        registry = SessionRegistry(context, language, scheduler.overloaded)
        runtime.service = Service(scheduler, registry)
        registry.start()
        loader: asyncio.Task[None] | None = None
        if preloaded is not None:
            _install_engine(app, preloaded)
        else:
            loader = asyncio.create_task(_load_engine(app), name="model-loader")
        yield
        if loader is not None and not loader.done():
            loader.cancel()
        # Usually stopped already, on shutdown; not when the app is only cleaned up.
        await scheduler.stop(SHUTDOWN_PASS_GRACE_SECONDS)
        await registry.stop()
        log.info("shutdown_complete")

    return ctx


async def _load_engine(app: web.Application) -> None:
    settings = app[SETTINGS]
    loop = asyncio.get_running_loop()
    log.info("model_loading", model=settings.model, device=settings.device)
    started = time.perf_counter()
    try:
        engine = await loop.run_in_executor(app[PASS_EXECUTOR], Engine.load, settings)
    except Exception as exc:
        app[RUNTIME].error = f"model {settings.model!r} failed to load: {exc}"
        log.exception("model_load_failed", model=settings.model)
        return
    log.info("model_loaded", seconds=round(time.perf_counter() - started, 3))
    _install_engine(app, engine)


def _install_engine(app: web.Application, engine: Engine) -> None:
    metrics = app[METRICS]
    runtime = app[RUNTIME]
    assert runtime.service is not None
    runtime.service.registry.set_default_language(engine.session_language())
    runtime.service.scheduler.start(engine)
    runtime.service.registry.request_passes()
    info = engine.info
    metrics.model_info.info(
        {
            "name": info.name,
            "source": info.source,
            "device": info.device,
            "compute_type": info.compute_type,
        }
    )
    metrics.model_load_duration.set(info.load_seconds)
    metrics.model_ready.set(1)
    runtime.engine = engine
