"""Who may call the service: browser origins (CORS) and the optional bearer token."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from .ratelimit import Caller
from .schema import error_body
from .settings import Settings

log = structlog.get_logger("isweep_backend.security")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_ROUTES = frozenset({"/healthz", "/openapi.json", "/docs"})
OPEN_PREFIXES = ("/docs/",)
PREFLIGHT_MAX_AGE_SECONDS = "600"
# Headers a browser page may read besides the CORS-safelisted ones.
EXPOSED_HEADERS = "Retry-After, WWW-Authenticate"


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    for pattern in allowed:
        if pattern.endswith("*"):
            if origin.startswith(pattern[:-1]):
                return True
        elif origin == pattern:
            return True
    return False


def parse_origins(raw: str) -> list[str]:
    return [o.strip() for o in raw.split(",") if o.strip()]


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def is_own_origin(request: web.Request, origin: str, bind_host: str) -> bool:
    """A page the service served itself (e.g. /docs). Only under a name that is ours: a page
    whose DNS name was rebound to this address has the same Host and Origin, but not our name.
    """
    if origin != f"{request.scheme}://{request.host}":
        return False
    hostname = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    return hostname in LOOPBACK_NAMES or hostname == bind_host


def token_matches(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    # Header bytes that are not UTF-8 arrive as surrogate escapes: they round-trip to the
    # bytes sent, which then simply do not match.
    offered = header[len("Bearer ") :].encode("utf-8", "surrogateescape")
    # Constant time, so the answer's timing tells nothing about the token.
    return hmac.compare_digest(offered, token.encode())


def _caller_origin(request: web.Request, settings: Settings, allowed: list[str]) -> str | None:
    """The request's Origin if it is one that may call the service, else None."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if is_own_origin(request, origin, settings.host) or origin_allowed(origin, allowed):
        return origin
    return None


def client_address(request: web.Request, trusted_proxies: str) -> str:
    """The address the request came from: the peer, or, when the peer is a trusted reverse
    proxy, the last X-Forwarded-For entry (the one it appended; earlier ones are the
    client's own say and could be anything)."""
    peer = request.remote or ""
    if peer and peer in {a.strip() for a in trusted_proxies.split(",")}:
        hops = [
            hop.strip()
            for value in request.headers.getall("X-Forwarded-For", [])
            for hop in value.split(",")
            if hop.strip()
        ]
        if hops:
            return hops[-1]
    return peer


def caller_of(request: web.Request, settings: Settings) -> Caller:
    """Who starts a session, for the limits on starting them. There is one token, so every
    caller that passed the auth check shares the token's bucket; without a token, every
    caller shares one."""
    return Caller(
        address=client_address(request, settings.trusted_proxies),
        token="bearer" if settings.auth_token else "",
    )


def cors_middleware(settings: Settings) -> Middleware:
    """Refuses browser origins that may not call, and answers preflights."""
    allowed = parse_origins(settings.cors_origins)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)  # not from a browser page: nothing to do
        if _caller_origin(request, settings, allowed) is None:
            log.info("origin_refused", origin=origin[:100])
            return web.json_response(
                error_body("origin_not_allowed", "this origin may not call the service"),
                status=403,
            )
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE_SECONDS
            return response
        return await handler(request)

    return middleware


def cors_headers_on_every_answer(
    settings: Settings,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An `on_response_prepare` hook: every answer to an allowed origin carries the CORS
    headers, errors included (they are made by the outer error middleware, after the CORS
    middleware has returned), so a browser client can read the error and its Retry-After."""
    allowed = parse_origins(settings.cors_origins)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = _caller_origin(request, settings, allowed)
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers["Vary"] = "Origin"

    return add_headers


def auth_middleware(settings: Settings) -> Middleware:
    open_routes = set(OPEN_ROUTES)
    if not settings.metrics_require_token:
        open_routes.add("/metrics")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            not settings.auth_token
            or request.path in open_routes
            or request.path.startswith(OPEN_PREFIXES)
            or request.method == "OPTIONS"
            or token_matches(request.headers.get("Authorization"), settings.auth_token)
        ):
            return await handler(request)
        return web.json_response(
            error_body("unauthorized", "a valid 'Authorization: Bearer <token>' is required"),
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="isweep-backend"'},
        )

    return middleware
