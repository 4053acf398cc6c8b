"""The one `/asr/stream` client every benchmark sends with: the request body the extension
sends, one POST with its timing and typed answer, and sending on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

MIME_TYPE = "audio/webm;codecs=opus"  # what the extension's MediaRecorder makes
STREAM_PATH = "/asr/stream"
SLOW_RTT_SECONDS = 0.5  # the extension counts a round trip over this as slow
JSON_HEADERS = {"Content-Type": "application/json"}


def b64(blob: bytes) -> str:
    """A blob as the request's `audio_b64` field carries it."""
    return base64.b64encode(blob).decode("ascii")


@dataclass(frozen=True)
class Chunk:
    """One request of a capture, as the extension sends it."""

    user_id: str
    tab_id: int
    seq: int
    chunk_start_seconds: float
    audio_b64: str
    mime_type: str = MIME_TYPE

    def body(self) -> bytes:
        """The JSON body, its fields in the extension's order."""
        return json.dumps(
            {
                "user_id": self.user_id,
                "tab_id": self.tab_id,
                "seq": self.seq,
                "chunk_start_seconds": self.chunk_start_seconds,
                "mime_type": self.mime_type,
                "audio_b64": self.audio_b64,
            }
        ).encode()


@dataclass(frozen=True)
class Answer:
    """What came back for one request. `sent` and `received` are on the caller's clock."""

    sent: float
    received: float  # the answer's body read, or the error raised
    status: int | None  # None: no HTTP answer (connection error, timeout)
    body: bytes = b""
    retry_after: str | None = None  # the Retry-After header, as sent
    exception: Exception | None = None  # why there was no HTTP answer

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def rtt(self) -> float:
        return self.received - self.sent

    def json(self) -> Any:
        """The parsed body; raises ValueError when it is not JSON."""
        return json.loads(self.body)

    def segments(self) -> list[dict[str, Any]]:
        """The segments of a 200 answer; [] for any other."""
        return list(self.json().get("segments", [])) if self.ok else []

    def error_code(self) -> str | None:
        """The error body's `error.code` (`overloaded`, `rate_limited`, ...), if it has one."""
        with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
            return str(self.json()["error"]["code"])
        return None

    def text(self, limit: int | None = None) -> str:
        """The body as text (its first `limit` bytes)."""
        return self.body[:limit].decode("utf-8", "replace")


class AnsweredRequest:
    """What a benchmark's per-request record reads through from its `answer` (the record
    classes are dataclasses with an `answer: Answer` field of their own)."""

    answer: Answer

    @property
    def sent(self) -> float:
        return self.answer.sent

    @property
    def received(self) -> float:
        return self.answer.received

    @property
    def rtt(self) -> float:
        return self.answer.rtt

    @property
    def status(self) -> int | None:
        """None: no HTTP answer (connection error, timeout)."""
        return self.answer.status

    @property
    def ok(self) -> bool:
        return self.answer.ok

    def segments(self) -> list[dict[str, Any]]:
        return self.answer.segments()


async def post_chunk(
    http: aiohttp.ClientSession,
    url: str,
    chunk: Chunk | bytes,
    clock: Callable[[], float] | None = None,
) -> Answer:
    """POST one chunk to `{url}/asr/stream` and read the whole answer.

    Args:
        http: the caller's session (its timeout and connection pool apply).
        url: the service's base URL.
        chunk: the request, or its body already encoded (to keep encoding out of a timing).
        clock: what `sent` and `received` are read from; the running loop's time by default.

    Returns:
        The answer; a connection error or timeout is an `Answer` with `status` None, never an
        exception.
    """
    now = clock or asyncio.get_running_loop().time
    data = chunk if isinstance(chunk, bytes) else chunk.body()
    sent = now()
    try:
        async with http.post(url + STREAM_PATH, data=data, headers=JSON_HEADERS) as resp:
            body = await resp.read()
            return Answer(sent, now(), resp.status, body, resp.headers.get("Retry-After"))
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Answer(sent, now(), None, exception=exc)


async def sleep_until(loop: asyncio.AbstractEventLoop, at: float) -> float:
    """Sleep until loop time `at`; return how late it woke (0 when `at` had passed)."""
    now = loop.time()
    if at > now:
        await asyncio.sleep(at - now)
    return max(0.0, loop.time() - at)
