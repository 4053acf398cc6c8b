"""CLI: parse flags and ISWEEP_* env into Settings, build the app, run it."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence

import structlog
from aiohttp import web

from .app import SHUTDOWN_EXIT_GRACE_SECONDS, SHUTDOWN_REQUEST_GRACE_SECONDS, create_app
from .errors import ModelNotFound
from .logging import configure_logging
from .models import resolve_model
from .settings import instance_name, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValueError as exc:
        print(f"isweep-backend: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, instance=instance_name(settings))
    log = structlog.get_logger("isweep_backend")
    try:
        # Fail fast, before binding, on a model that cannot be found; loading happens later.
        if settings.model != "base":
            resolve_model(settings.model)
    except ModelNotFound as exc:
        log.error("model_not_found", model=settings.model, reason=str(exc))
        return 2
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.auth_token:
        log.warning(
            "listening_beyond_loopback",
            host=settings.host,
            hint="anyone who can reach this address can use the service; set ISWEEP_AUTH_TOKEN",
        )
    log.info("starting", host=settings.host, port=settings.port, model=settings.model)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        shutdown_timeout=SHUTDOWN_REQUEST_GRACE_SECONDS,
    )
    if not _executor_threads_finished(SHUTDOWN_EXIT_GRACE_SECONDS):
        # A pass (or the model load) outlived its grace. Python would wait for its thread at
        # exit, past the stop bound; nothing it holds needs saving, so leave without it.
        log.warning("shutdown_abandoned_work")
        sys.stdout.flush()
        os._exit(0)
    return 0


def _executor_threads_finished(timeout: float) -> bool:
    """Wait up to `timeout` for the pass and decode threads to end; whether they all did."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.startswith("isweep-"):
            thread.join(max(0.0, deadline - time.monotonic()))
    return not any(t.name.startswith("isweep-") and t.is_alive() for t in threading.enumerate())


if __name__ == "__main__":
    sys.exit(main())
