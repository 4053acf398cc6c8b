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
from .keys import DECODE_EXECUTOR, METRICS, PASS_EXECUTOR, RUNTIME, SETTINGS, Runtime
from .metrics import Metrics
from .scheduler import PassScheduler
from .security import auth_middleware, cors_middleware
from .sessions import SessionRegistry
from .settings import Settings, parallelism

log = structlog.get_logger("isweep_backend.app")
SHUTDOWN_PASS_GRACE_SECONDS = 10.0
# One decode thread for all sessions. Each blob's work is bounded (isweep_backend/budget.py),
# so a hostile blob holds it for tens of milliseconds at most, and a session that keeps
# sending such blobs is no longer decoded. More threads gain nothing reliable: demuxing is
# Python and holds the GIL, so a healthy blob decoded beside a hostile one waits for the GIL
# at each of its calls into FFmpeg instead of waiting in the queue (bench/hostile_blobs.py
# --queue measures both).
DECODE_THREADS = 1


def create_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """The whole service. Pass a loaded `engine` to share one model between apps (tests);
    otherwise the model loads in the background and /readyz turns 200 when it is warm."""
    app = web.Application(
        client_max_size=settings.max_request_bytes,
        # Outermost first: every answer, refusals included, is JSON, counted and logged.
        middlewares=[error_middleware, cors_middleware(settings), auth_middleware(settings)],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[RUNTIME] = Runtime()
    add_routes(app)
    app[METRICS].init_routes(r.canonical for r in app.router.resources())
    app.on_shutdown.append(_announce_shutdown)
    app.cleanup_ctx.append(_executors)
    app.cleanup_ctx.append(_engine_ctx(engine))
    return app


async def _announce_shutdown(app: web.Application) -> None:
    # Called once the listening socket is closed; requests in flight still get answers.
    registry = app[RUNTIME].registry
    log.info("shutdown_started", sessions=len(registry) if registry is not None else 0)


async def _executors(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[PASS_EXECUTOR] = ThreadPoolExecutor(
        parallelism(settings)[0], thread_name_prefix="isweep-pass"
    )
    app[DECODE_EXECUTOR] = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="isweep-decode")
    yield
    app[PASS_EXECUTOR].shutdown(wait=True, cancel_futures=True)
    app[DECODE_EXECUTOR].shutdown(wait=True, cancel_futures=True)


def _engine_ctx(
    preloaded: Engine | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        loader: asyncio.Task[None] | None = None
        if preloaded is not None:
            _install_engine(app, preloaded)
        else:
            loader = asyncio.create_task(_load_engine(app), name="model-loader")
        yield
        if loader is not None and not loader.done():
            loader.cancel()
        if runtime.scheduler is not None:
            await runtime.scheduler.stop(SHUTDOWN_PASS_GRACE_SECONDS)
        if runtime.registry is not None:
            await runtime.registry.stop()
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
    settings = app[SETTINGS]
    metrics = app[METRICS]
    scheduler = PassScheduler(
        engine,
        app[PASS_EXECUTOR],
        metrics,
        parallelism(settings)[0],
        settings.min_pass_audio_seconds,
        settings.overload_pass_cycle_seconds,
    )
    registry = SessionRegistry(
        settings,
        metrics,
        app[DECODE_EXECUTOR],
        scheduler.request,
        engine.session_language(),
        scheduler.overloaded,
    )
    runtime = app[RUNTIME]
    runtime.scheduler = scheduler
    runtime.registry = registry
    scheduler.start()
    registry.start()
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
