"""structlog configuration: JSON lines on stdout in production, readable console output in a
terminal. Records of other libraries' stdlib loggers (aiohttp, asyncio, faster-whisper) go
through the same processors, so every line on stdout has the same shape and the same fields.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import logging
import re
import secrets
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

# Fields that would hold raw identifiers or audio. Nothing logs them; if a call ever does by
# mistake, the line says so instead of carrying the value.
SECRET_FIELDS = frozenset({"user_id", "tab_id", "audio", "audio_b64", "body"})
REDACTED = "[redacted]"
# A run of base64 this long is audio (or a key), never a useful log value.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}={0,2}")
# Strings can come from a client's bytes (a container's CodecID may be a megabyte): longer
# ones are cut, so one request cannot write megabytes of log.
MAX_LOG_STRING_CHARS = 1000
# Libraries that log at INFO on every pass or request (aiohttp's access log would repeat each
# request without our fields): only their warnings get a line.
_CHATTY_LIBRARIES = ("faster_whisper", "aiohttp.access", "httpx", "huggingface_hub")
_HANDLER_NAME = "isweep_backend"
# Keyed per process: a plain hash of a guessable user id could be reversed by trying ids.
# Sessions live in one process only, so nothing needs the name to survive a restart.
_SESSION_HASH_KEY = secrets.token_bytes(32)


def session_hash(user_id: str, tab_id: int) -> str:
    """A stable (for this process), non-reversible name for a session, safe to log in place
    of its ids (which `redact_secrets` refuses to log)."""
    message = f"{user_id}\x00{tab_id}".encode()
    return hmac.new(_SESSION_HASH_KEY, message, hashlib.sha256).hexdigest()[:16]


def use_json(log_format: str) -> bool:
    if log_format == "json":
        return True
    if log_format == "console":
        return False
    return not sys.stdout.isatty()


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) > MAX_LOG_STRING_CHARS:
            cut = len(value) - MAX_LOG_STRING_CHARS
            value = f"{value[:MAX_LOG_STRING_CHARS]}... ({cut} more characters)"
        return _BASE64_RUN.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace raw ids and anything that looks like base64 audio, exception text included,
    and cut overlong strings."""
    for key in SECRET_FIELDS & event_dict.keys():
        event_dict[key] = REDACTED
    for key, value in event_dict.items():
        if key != "exc_info":
            event_dict[key] = _scrub(value)
    return event_dict


def _renderer(json_lines: bool, stream: TextIO) -> list[Processor]:
    if json_lines:
        # Never the frames' locals: they hold request bodies (base64 audio) and raw ids.
        exceptions = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        return [
            structlog.processors.ExceptionRenderer(exceptions),
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ]
    formatter: Any = structlog.dev.plain_traceback
    if importlib.util.find_spec("rich") is not None:
        formatter = structlog.dev.RichTracebackFormatter(show_locals=False)
    colors = stream.isatty()
    return [
        redact_secrets,
        structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=formatter),
    ]


def _add_instance(instance: str) -> Processor:
    def add(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("instance", instance)
        return event_dict

    return add


def configure_logging(
    level: str = "info", log_format: str = "auto", stream: TextIO | None = None, instance: str = ""
) -> None:
    """Send structlog events and stdlib records alike to `stream` (stdout) through one
    handler on the root logger; calling it again replaces that handler. A non-empty
    `instance` names the replica in every line, so logs of several replicas can be merged."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    json_lines = use_json(log_format)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if instance:
        shared.append(_add_instance(instance))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    stream = sys.stdout if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderer(json_lines, stream),
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
