"""Helpers several test modules share."""

from __future__ import annotations

from aiohttp import web

from isweep_backend.keys import RUNTIME, Service


def service_of(app: web.Application) -> Service:
    """The app's scheduler and registry, which exist once its start-up has run."""
    service = app[RUNTIME].service
    assert service is not None, "the app has not started"
    return service
