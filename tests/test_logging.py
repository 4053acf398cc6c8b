"""The service's log lines: JSON with the request's context, exceptions without locals, raw ids
redacted, other libraries' records in the same shape, and the console format for people."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import structlog

from isweep_backend.logging import configure_logging
from tests.observability_tools import USER_ID


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    structlog.contextvars.clear_contextvars()
    yield stream
    structlog.contextvars.clear_contextvars()
    configure_logging("warning", "json")  # as tests/conftest.py has it


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_exception_line_names_the_frames_but_holds_no_locals_ids_or_audio(
    log_stream: io.StringIO,
) -> None:
    audio_b64 = base64.b64encode(np.random.default_rng(1).bytes(300)).decode()

    def handler(body: bytes, user_id: str) -> None:
        raise ValueError(f"cannot use {audio_b64}")

    structlog.contextvars.bind_contextvars(request_id="0123456789abcdef")
    try:
        handler(json.dumps({"audio_b64": audio_b64, "user_id": USER_ID}).encode(), USER_ID)
    except ValueError:
        structlog.get_logger("isweep_backend.api").exception("request_failed")
    (line,) = _lines(log_stream)
    assert line["event"] == "request_failed" and line["level"] == "error"
    assert line["request_id"] == "0123456789abcdef"
    frames = line["exception"][0]["frames"]
    assert frames[-1]["name"] == "handler" and all("locals" not in f for f in frames)
    text = log_stream.getvalue()
    assert USER_ID not in text and audio_b64[:24] not in text


def test_a_raw_id_passed_by_mistake_is_redacted(log_stream: io.StringIO) -> None:
    structlog.get_logger("isweep_backend.api").info("chunk_answered", user_id=USER_ID, tab_id=7)
    (line,) = _lines(log_stream)
    assert line["user_id"] == line["tab_id"] == "[redacted]"


def test_other_libraries_records_are_json_lines_with_the_same_fields(
    log_stream: io.StringIO,
) -> None:
    structlog.contextvars.bind_contextvars(request_id="0123456789abcdef")
    logging.getLogger("aiohttp.server").error("Error handling request")
    logging.getLogger("faster_whisper").info("Processing audio with duration 00:01.000")
    (line,) = _lines(log_stream)
    assert line["event"] == "Error handling request"
    assert line["logger"] == "aiohttp.server" and line["level"] == "error"
    assert line["request_id"] == "0123456789abcdef" and "timestamp" in line


def test_console_format_is_for_people_and_json_is_forced_by_the_flag() -> None:
    stream = io.StringIO()
    try:
        configure_logging("info", "console", stream=stream)
        structlog.get_logger("isweep_backend").info("starting", port=8001)
        assert "starting" in stream.getvalue() and not stream.getvalue().startswith("{")
    finally:
        configure_logging("warning", "json")
