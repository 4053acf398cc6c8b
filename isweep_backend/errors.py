"""Exceptions raised inside the pipeline; `api.py` alone turns them into HTTP answers."""

from __future__ import annotations

from typing import Literal

# Untrusted strings (a container's CodecID, a codec name) are cut to this many characters
# before they reach an error message or a log line: a WebM CodecID may be a megabyte.
MAX_UNTRUSTED_CHARS = 64


def clip(text: str, limit: int = MAX_UNTRUSTED_CHARS) -> str:
    """`text` as a quoted literal (control characters escaped), cut to `limit` characters
    with the number of characters left out."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text) - limit} more characters)"


class IsweepError(Exception):
    """Base of every error the pipeline raises on purpose."""


class InvalidRequest(IsweepError):
    """The request body is not a valid chunk (400)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Why a blob yielded no audio: the `kind` label of isweep_decode_errors_total (README).
DecodeErrorKind = Literal[
    "no_stream_header",
    "unsupported_codec",
    "corrupt_stream",
    "no_audio_stream",
    "corrupt_file",
    "decoder_error",
    "unsupported_container",
    "implausible_format",
    "over_budget",
]


class UndecodableAudio(IsweepError):
    """A blob's bytes could not be turned into audio; the session keeps its other audio."""

    def __init__(self, kind: DecodeErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class SessionLimit(IsweepError):
    """The service holds as many sessions as it may; a new one must retry later (503)."""


class Overloaded(IsweepError):
    """Recognition cannot keep up: new sessions are shed so existing ones stay live (503)."""


class RateLimited(IsweepError):
    """A client sends faster than any recorder does: too many requests or sessions (429)."""

    def __init__(self, code: str, message: str, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_seconds = retry_after_seconds  # None: the default Retry-After


class ModelNotReady(IsweepError):
    """The model failed to load (503); while it loads, chunks are accepted and buffered."""


class ModelNotFound(IsweepError):
    """A model name or path could not be resolved to a loadable model."""


class ModelIntegrityError(ModelNotFound):
    """A bundled model's file is not the one its pinned package version ships."""
