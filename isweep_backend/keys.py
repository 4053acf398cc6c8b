"""The typed keys under which the app holds its long-lived parts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from .engine import Engine
from .metrics import Metrics
from .scheduler import PassScheduler
from .sessions import SessionRegistry
from .settings import Settings


@dataclass
class Runtime:
    """The pipeline: the scheduler and registry from start-up, the engine once the model is
    loaded, `error` if it failed to load."""

    engine: Engine | None = None
    scheduler: PassScheduler | None = None
    registry: SessionRegistry | None = None
    error: str | None = None


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
RUNTIME = web.AppKey("runtime", Runtime)
DECODE_EXECUTOR = web.AppKey("decode_executor", ThreadPoolExecutor)
PASS_EXECUTOR = web.AppKey("pass_executor", ThreadPoolExecutor)
