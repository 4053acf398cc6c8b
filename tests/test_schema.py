from __future__ import annotations

import base64
import json

import pytest

from isweep_backend.errors import InvalidRequest
from isweep_backend.schema import parse_chunk, segments_from_words
from isweep_backend.timeline import Word
from tests.conftest import ClientFactory


def body(**fields: object) -> bytes:
    base: dict[str, object] = {
        "user_id": "u",
        "tab_id": 1,
        "seq": 0,
        "mime_type": "audio/webm",
        "audio_b64": base64.b64encode(b"\x1a\x45\xdf\xa3").decode(),
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_base64_with_line_breaks_and_missing_padding_is_accepted() -> None:
    assert parse_chunk(body(audio_b64="GkXf\now")).audio == b"\x1a\x45\xdf\xa3"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"user_id": ...}, "missing_field"),
        ({"tab_id": "7"}, "invalid_field"),
        ({"tab_id": True}, "invalid_field"),
        ({"seq": -1}, "invalid_field"),
        ({"seq": 2**60}, "invalid_field"),
        ({"user_id": "x" * 300}, "invalid_field"),
        ({"audio_b64": "not base64!"}, "invalid_base64"),
        ({"audio_b64": "A"}, "invalid_base64"),
        ({"chunk_start_seconds": "soon"}, "invalid_field"),
    ],
)
def test_invalid_fields_are_rejected_with_a_code(fields: dict[str, object], code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chunk(body(**fields))
    assert info.value.code == code


def test_unknown_fields_are_ignored() -> None:
    assert parse_chunk(body(extension_version="3.1")).seq == 0


def test_segments_split_at_sentence_ends_and_pauses_and_skip_empty_words() -> None:
    S = 16000
    ws = [
        Word(" Hello", 0, S // 2, 0.9),
        Word(" there.", S // 2, S, 0.7),
        Word(" ", S, S, 0.5),
        Word(" Next", 2 * S, 3 * S, 0.8),
        Word(" one", 4 * S, 5 * S, 1.0),
    ]
    segments = segments_from_words(ws)
    assert [s["text"] for s in segments] == ["Hello there.", "Next", "one"]
    assert segments[0]["confidence"] == pytest.approx(0.8)
    assert segments[0]["words"][1] == {
        "word": "there.",
        "start_seconds": 0.5,
        "end_seconds": 1.0,
        "probability": 0.7,
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,  # deeper than the parser's stack
        b'{"user_id": "u", "tab_id": ' + b"7" * 5000 + b"}",  # over the int-conversion limit
        b'{"user_id": "\xff"}',  # not UTF-8
    ],
    ids=["deep_nesting", "huge_integer", "not_utf8"],
)
def test_bodies_the_json_parser_chokes_on_are_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chunk(raw)
    assert info.value.code == "invalid_json"


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"seq": ' + b"1" * 4301 + b"}"],
    ids=["deep_nesting", "huge_integer"],
)
async def test_parser_chokes_answer_400_through_the_app(
    make_client: ClientFactory, raw: bytes
) -> None:
    client = await make_client()
    resp = await client.post("/asr/stream", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_json"
