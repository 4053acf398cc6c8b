"""The typed keys under which the app holds its long-lived parts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from .engine import Engine
from .metrics import Metrics
from .registry import SessionRegistry
from .scheduler import PassScheduler
from .settings import Settings


@dataclass(frozen=True)
class Service:
    """The pipeline start-up builds: the pass scheduler and the sessions that use it."""

    scheduler: PassScheduler
    registry: SessionRegistry


@dataclass
class Runtime:
    """What the app holds as it starts: the service once built, the model once loaded
    (later: sessions buffer audio meanwhile), `error` if the model failed to load."""

    service: Service | None = None
    engine: Engine | None = None
    error: str | None = None


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
RUNTIME = web.AppKey("runtime", Runtime)
DECODE_EXECUTOR = web.AppKey("decode_executor", ThreadPoolExecutor)
PASS_EXECUTOR = web.AppKey("pass_executor", ThreadPoolExecutor)
