"""The real app on a real loopback port, in a thread, for clients that are not asyncio
(schemathesis) and for tests that need a URL."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from bench.service import free_port
from isweep_backend.app import create_app
from isweep_backend.engine import Engine
from isweep_backend.settings import Settings


@contextmanager
def serve(settings: Settings, engine: Engine) -> Iterator[tuple[str, web.Application]]:
    loop = asyncio.new_event_loop()
    app = create_app(settings, engine)
    runner = web.AppRunner(app)
    port = free_port()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="live-server", daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the live server did not start")
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
