"""The wire format: validating a chunk request, and shaping committed words into segments."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .timeline import SAMPLE_RATE, Word

MAX_USER_ID_CHARS = 256
MAX_SEQ = 2**53 - 1  # the largest integer a JavaScript client can count to exactly
MAX_TAB_ID = 2**63 - 1
# A pause this long, or a sentence end, closes a segment.
SEGMENT_PAUSE_SAMPLES = SAMPLE_RATE // 2
_SENTENCE_END = re.compile(r"[.?!\u2026\u3002\uff1f\uff01]['\")\]]*$")
_WHITESPACE = re.compile(rb"\s+")


@dataclass(frozen=True)
class Chunk:
    user_id: str
    tab_id: int
    seq: int
    mime_type: str
    audio: bytes
    chunk_start_seconds: float | None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(body: dict[str, Any], name: str) -> Any:
    if name not in body or body[name] is None:
        raise InvalidRequest("missing_field", f"field {name!r} is required")
    return body[name]


def decode_base64(text: str) -> bytes:
    """Standard base64; whitespace (line breaks of MIME-style encoders) and missing trailing
    padding are accepted, anything else is an error."""
    raw = _WHITESPACE.sub(b"", text.encode("ascii", "strict"))
    raw += b"=" * (-len(raw) % 4)
    return base64.b64decode(raw, validate=True)


def parse_chunk(body_bytes: bytes) -> Chunk:
    try:
        body = json.loads(body_bytes)
    except RecursionError as exc:
        # Nesting deeper than the parser's stack: no chunk is shaped like that.
        raise InvalidRequest("invalid_json", "body is nested too deeply") from exc
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, and the int-conversion limit (over 4300
        # digits) are all ValueErrors: each means the body is not a chunk.
        raise InvalidRequest("invalid_json", f"body is not valid JSON: {exc}"[:200]) from exc
    if not isinstance(body, dict):
        raise InvalidRequest("invalid_json", "body must be a JSON object")

    user_id = _require(body, "user_id")
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_USER_ID_CHARS:
        raise InvalidRequest(
            "invalid_field",
            f"user_id must be a non-empty string of at most {MAX_USER_ID_CHARS} characters",
        )
    tab_id = _require(body, "tab_id")
    if not _is_int(tab_id) or not -MAX_TAB_ID <= tab_id <= MAX_TAB_ID:
        raise InvalidRequest("invalid_field", "tab_id must be an integer")
    seq = _require(body, "seq")
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
        raise InvalidRequest("invalid_field", f"seq must be an integer from 0 to {MAX_SEQ}")
    mime_type = _require(body, "mime_type")
    if not isinstance(mime_type, str):
        raise InvalidRequest("invalid_field", "mime_type must be a string")
    audio_b64 = _require(body, "audio_b64")
    if not isinstance(audio_b64, str):
        raise InvalidRequest("invalid_field", "audio_b64 must be a base64 string")
    try:
        audio = decode_base64(audio_b64)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise InvalidRequest("invalid_base64", f"audio_b64 is not valid base64: {exc}") from exc
    start = body.get("chunk_start_seconds")
    if start is not None and (
        not isinstance(start, (int, float)) or isinstance(start, bool) or not math.isfinite(start)
    ):
        raise InvalidRequest("invalid_field", "chunk_start_seconds must be a finite number")
    return Chunk(
        user_id=user_id,
        tab_id=tab_id,
        seq=seq,
        mime_type=mime_type,
        audio=audio,
        chunk_start_seconds=None if start is None else float(start),
    )


def _seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 3)


def segments_from_words(words: list[Word]) -> list[dict[str, Any]]:
    """Group committed words into segments at pauses and sentence ends; drop empty text."""
    groups: list[list[Word]] = []
    for word in words:
        if not word.text.strip():
            continue
        if groups:
            last = groups[-1][-1]
            pause = word.start - last.end >= SEGMENT_PAUSE_SAMPLES
            if not pause and not _SENTENCE_END.search(last.text.strip()):
                groups[-1].append(word)
                continue
        groups.append([word])
    return [_segment(group) for group in groups]


def _segment(words: list[Word]) -> dict[str, Any]:
    text = "".join(w.text for w in words).strip()
    return {
        "text": text,
        "start_seconds": _seconds(words[0].start),
        "end_seconds": _seconds(words[-1].end),
        "confidence": round(sum(w.probability for w in words) / len(words), 4),
        "words": [
            {
                "word": w.text.strip(),
                "start_seconds": _seconds(w.start),
                "end_seconds": _seconds(w.end),
                "probability": round(w.probability, 4),
            }
            for w in words
        ],
    }


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
