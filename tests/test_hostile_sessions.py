"""One hostile session must not hurt the others: while it posts crafted 3 MiB blobs back to
back, a healthy session replaying real Chrome blobs gets its answers within its wait budget,
and the same audio and words as when it has the service to itself."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np

from isweep_backend.audio.decode import SessionDecoder
from isweep_backend.keys import METRICS, SETTINGS
from isweep_backend.schema import segments_from_words
from tests.audio_tools import FIXTURES
from tests.conftest import Client, ClientFactory, chunk_body
from tests.hostile_audio import webm_resync_storm
from tests.support import service_of

MANIFEST = json.loads((FIXTURES / "chrome" / "blobs.json").read_text())
# The first WebM stream of the real recording: seq 0-8 (seq 9 is the blob stop() flushed).
HEALTHY = [(FIXTURES / "chrome" / b["file"]).read_bytes() for b in MANIFEST["blobs"][:9]]
# Under the 4 MiB request limit once in base64 and JSON.
HOSTILE_BYTES = (3 << 20) - 4096
# A busy two-core machine runs the model, this test's client and the parsing of each 4 MiB
# request body on the event loop (0.1-0.2 s each) too: an answer may be late by this much on
# top of the wait budget. The old decoder made it late by minutes.
SLACK_SECONDS = 2.0
Word = tuple[str, float, float]


async def _replay_healthy(client: Client) -> tuple[list[float], list[Word]]:
    """Post the healthy blobs in order, each once the pass for the one before has run (so
    which audio each pass sees does not depend on timing, and two runs can be compared). Nothing
    is resent after the last blob (the extension never does): the words of the last pass, which
    may miss its answer when the machine is slow, are read from the session itself, so the two
    runs compare the same passes. (latency of each answer, words)"""
    latencies: list[float] = []
    words: list[Word] = []
    for seq, blob in enumerate(HEALTHY):
        started = time.perf_counter()
        resp = await client.post("/asr/stream", json=chunk_body(blob, seq, user_id="healthy"))
        body = await resp.json()
        latencies.append(time.perf_counter() - started)
        assert resp.status == 200, body
        words += _words(body)
        session = service_of(client.app).registry.get(("healthy", 7))
        assert session is not None
        for _ in range(600):
            if not service_of(client.app).scheduler.pending(session):
                break
            await asyncio.sleep(0.02)
    session = service_of(client.app).registry.get(("healthy", 7))
    assert session is not None
    words += _words({"segments": segments_from_words(session.take_words())})
    return latencies, words


def _words(body: Any) -> list[Word]:
    """(text lower case without punctuation, start, end) of each word of an answer."""
    return [
        ("".join(c for c in w["word"].lower() if c.isalnum()), w["start_seconds"], w["end_seconds"])
        for s in body["segments"]
        for w in s["words"]
    ]


async def _post_hostile_until(client: Client, done: asyncio.Event) -> int:
    """Post crafted 3 MiB blobs back to back until `done`, each as seq 0 of a new session (a
    session is cut off after a few), each full of blocks that send the demuxer back to
    resynchronise. Returns how many were accepted (and so decoded)."""
    # Serialised once: the client shares the server's event loop and CPU.
    template = json.dumps(chunk_body(webm_resync_storm(HOSTILE_BYTES), 0, user_id="hostile-00000"))
    body = template.encode()
    posted = tries = 0
    while not done.is_set():
        user_id = f"hostile-{tries:05d}".encode()
        tries += 1
        resp = await client.post(
            "/asr/stream",
            data=body.replace(b"hostile-00000", user_id, 1),
            headers={"Content-Type": "application/json"},
        )
        # A new session may be shed (503) while the machine is behind: try the next one.
        assert resp.status in (200, 503), await resp.text()
        if resp.status == 503:
            await asyncio.sleep(0.1)
        else:
            posted += 1
    return posted


def _clean_decode() -> np.ndarray:
    decoder = SessionDecoder()
    return np.concatenate([decoder.decode(b).pcm for b in HEALTHY])


async def test_a_hostile_session_leaves_a_healthy_ones_answers_audio_and_words_alone(
    make_client: ClientFactory,
) -> None:
    clean_client = await make_client()
    _, clean_words = await _replay_healthy(clean_client)
    assert clean_words, "the clean replay recognised nothing to compare with"

    # Many hostile callers, not one: the per-address session-start limit would otherwise turn
    # the crafted blobs away before they reach the decoder, which is what this test loads.
    client = await make_client(
        new_sessions_per_minute_per_client=0.0, new_sessions_per_minute_per_token=0.0
    )
    done = asyncio.Event()
    hostile = asyncio.create_task(_post_hostile_until(client, done))
    await asyncio.sleep(0.5)  # the hostile sessions are busy before the healthy one starts
    try:
        latencies, words = await _replay_healthy(client)
    finally:
        done.set()
        posted = await hostile
    assert posted >= 3, "the hostile sessions were not posting during the replay"
    wait = client.app[SETTINGS].response_wait_seconds
    assert max(latencies) < wait + SLACK_SECONDS, latencies
    metrics = client.app[METRICS]
    assert metrics.decode_errors.labels("over_budget")._value.get() == posted

    session = service_of(client.app).registry.get(("healthy", 7))
    assert session is not None
    clean = _clean_decode()
    assert session.ring.end == clean.size
    np.testing.assert_array_equal(session.ring.window(), clean[session.ring.start :])
    # Each pass saw the same audio as in the clean run: the same words at the same times.
    assert words == clean_words
