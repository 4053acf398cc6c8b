"""The HTTP contract through the real app and the real model: statuses, bodies, limits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from isweep_backend.engine import Engine
from isweep_backend.keys import METRICS
from isweep_backend.recognition import Transcript
from isweep_backend.timeline import SAMPLE_RATE, Pcm
from tests.audio_tools import FIXTURES, cut_blobs, encode_opus_stream, wav_bytes
from tests.conftest import Client, ClientFactory, chunk_body, load_synthetic
from tests.support import service_of

CHROME = FIXTURES / "chrome"  # real Chrome MediaRecorder blobs (see its README.md)


async def post(client: Client, payload: Any) -> tuple[int, Any]:
    resp = await client.post("/asr/stream", json=payload)
    return resp.status, await resp.json()


async def test_health_and_readiness_report_the_model(make_client: ClientFactory) -> None:
    client = await make_client()
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    body = await ready.json()
    assert body["model"] == "tiny.en"
    assert (body["device"], body["compute_type"], body["beam_size"]) == ("cpu", "int8", 1)


async def test_malformed_requests_get_400_with_a_json_error(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.post(
        "/asr/stream", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_json"
    status, body = await post(client, {"user_id": "u", "tab_id": 1, "seq": 0})
    assert status == 400 and body["error"]["code"] == "missing_field"
    status, body = await post(client, chunk_body(b"x", 0) | {"audio_b64": "@@@"})
    assert status == 400 and body["error"]["code"] == "invalid_base64"


async def test_oversized_body_gets_413(make_client: ClientFactory) -> None:
    client = await make_client(max_request_bytes=4096)
    status, body = await post(client, chunk_body(b"\0" * 8192, 0))
    assert status == 413 and body["error"]["code"] == "request_too_large"


Word = tuple[str, float, float]


async def _post_collecting(
    client: Client, items: list[tuple[int, bytes]], words: list[Word]
) -> None:
    """Post (seq, blob) items of session user-1/7 in order, adding the words answered."""
    for seq, blob in items:
        status, body = await post(client, chunk_body(blob, seq))
        assert status == 200, body
        words += [
            (w["word"], w["start_seconds"], w["end_seconds"])
            for s in body["segments"]
            for w in s["words"]
        ]


async def _collect_the_rest(client: Client, last: tuple[int, bytes]) -> list[Word]:
    """Once the session's last pass is done, resend its last blob for the words left."""
    session = service_of(client.app).registry.get(("user-1", 7))
    assert session is not None
    for _ in range(600):
        if not service_of(client.app).scheduler.pending(session):
            break
        await asyncio.sleep(0.05)
    words: list[Word] = []
    await _post_collecting(client, [last], words)
    return words


async def test_undecodable_audio_gets_200_and_keeps_the_sessions_audio(
    make_client: ClientFactory,
) -> None:
    # Real Chrome blobs, seq 0-8 of one recording, and a blob of garbage from another encoder
    # in the same stream, between seq 2 and 3: the session's audio before it stays, the
    # stream resyncs after it, and the session hears every word it hears without the garbage.
    blobs = [(CHROME / f"seq{i:02d}.webm-part").read_bytes() for i in range(9)]
    garbage = b"RIFF\x00\x00junk" + np.random.default_rng(0).bytes(16_000)
    clean_client = await make_client(response_wait_seconds=5.0)
    clean: list[Word] = []
    await _post_collecting(clean_client, list(enumerate(blobs)), clean)
    clean += await _collect_the_rest(clean_client, (8, blobs[8]))
    assert len(clean) > 10

    client = await make_client(response_wait_seconds=5.0)
    words: list[Word] = []
    await _post_collecting(client, list(enumerate(blobs[:3])), words)
    session = service_of(client.app).registry.get(("user-1", 7))
    assert session is not None
    kept = session.ring.end
    assert kept > 2 * SAMPLE_RATE
    await _post_collecting(client, [(3, garbage)], words)
    # At most a damaged block's worth of audio (the garbage completes the block that blob 2
    # left open), and none of the session's audio lost.
    assert kept <= session.ring.end <= kept + 0.15 * SAMPLE_RATE
    later = [(seq + 1, blob) for seq, blob in enumerate(blobs) if seq >= 3]
    await _post_collecting(client, later, words)
    words += await _collect_the_rest(client, later[-1])
    assert service_of(client.app).registry.get(("user-1", 7)) is session
    assert [w[0] for w in words] == [w[0] for w in clean]
    for got, want in zip(words, clean, strict=True):
        # Resyncing skips the rest of the damaged block (about 60 ms): later words are early
        # by that much.
        assert abs(got[1] - want[1]) <= 0.2 and abs(got[2] - want[2]) <= 0.2, (got, want)


async def test_duplicate_seq_adds_no_audio(make_client: ClientFactory) -> None:
    client = await make_client()
    blob = wav_bytes(np.zeros(SAMPLE_RATE, dtype=np.float32))
    await post(client, chunk_body(blob, 0))
    await post(client, chunk_body(blob, 0))
    session = service_of(client.app).registry.get(("user-1", 7))
    assert session is not None and session.ring.end == SAMPLE_RATE


async def test_new_sessions_beyond_the_cap_get_503_with_retry_after(
    make_client: ClientFactory,
) -> None:
    client = await make_client(max_sessions=1)
    blob = wav_bytes(np.zeros(SAMPLE_RATE // 4, dtype=np.float32))
    assert (await post(client, chunk_body(blob, 0, tab_id=1)))[0] == 200
    resp = await client.post("/asr/stream", json=chunk_body(blob, 0, tab_id=2))
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert (await resp.json())["error"]["code"] == "session_limit"
    assert (await post(client, chunk_body(blob, 1, tab_id=1)))[0] == 200


async def test_idle_sessions_are_evicted_after_the_ttl(make_client: ClientFactory) -> None:
    client = await make_client(session_ttl_seconds=0.2, max_sessions=2)
    blob = wav_bytes(np.zeros(SAMPLE_RATE // 4, dtype=np.float32))
    for tab in (1, 2):
        await post(client, chunk_body(blob, 0, tab_id=tab))
    registry = service_of(client.app).registry
    assert registry is not None and len(registry) == 2
    for _ in range(40):
        if len(registry) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(registry) == 0
    assert client.app[METRICS].sessions_evicted.labels("ttl")._value.get() == 2
    # The freed places take new sessions again.
    assert (await post(client, chunk_body(blob, 0, tab_id=3)))[0] == 200


async def test_event_loop_answers_while_a_pass_runs(make_client: ClientFactory) -> None:
    client = await make_client(response_wait_seconds=5.0)
    speech = load_synthetic("long")
    blob = wav_bytes(speech.pcm[: 20 * SAMPLE_RATE])
    scheduler = service_of(client.app).scheduler
    pending = asyncio.create_task(post(client, chunk_body(blob, 0)))
    for _ in range(2000):  # until the pass has started on its executor thread
        if scheduler.running:
            break
        await asyncio.sleep(0.005)
    started = time.perf_counter()
    resp = await client.get("/healthz")
    elapsed = time.perf_counter() - started
    still_running = scheduler.running > 0
    assert resp.status == 200
    # Ordering, not a stopwatch: the probe was answered while the pass was still running.
    assert still_running, "the pass ended before the probe: nothing was shown"
    status, body = await pending
    assert status == 200 and body["segments"]
    # And it took a fraction of the pass it overlapped (a blocked loop would take all of it).
    pass_seconds = client.app[METRICS].pass_duration._sum.get()
    assert elapsed < pass_seconds / 2


async def test_metrics_endpoint_serves_prometheus_text(make_client: ClientFactory) -> None:
    client = await make_client()
    await client.get("/healthz")
    resp = await client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert 'isweep_http_requests_total{route="/healthz",status_class="2xx"}' in text
    assert "user-1" not in text


async def test_seq_zero_with_a_new_header_starts_a_new_timeline(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    speech = load_synthetic("pauses")
    first = cut_blobs(encode_opus_stream(speech.pcm[: 3 * SAMPLE_RATE], SAMPLE_RATE), 1.0)
    second = cut_blobs(encode_opus_stream(speech.pcm[SAMPLE_RATE:], SAMPLE_RATE), 1.0)
    for seq, blob in enumerate(first):
        await post(client, chunk_body(blob, seq))
    registry = service_of(client.app).registry
    old = registry.get(("user-1", 7))
    assert old is not None and old.ring.end > 2 * SAMPLE_RATE
    # A resent seq 0 is the same capture ...
    await post(client, chunk_body(first[0], 0))
    assert registry.get(("user-1", 7)) is old
    # ... a seq 0 with another header is a new one, whose clock starts again at 0.
    await post(client, chunk_body(second[0], 0))
    new = registry.get(("user-1", 7))
    assert new is not None and new is not old and old.closed
    assert new.ring.end < 1.5 * SAMPLE_RATE
    assert client.app[METRICS].sessions_evicted.labels("new_capture")._value.get() == 1


async def test_a_pass_that_raises_answers_200_and_the_session_goes_on(
    make_client: ClientFactory, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection (a stand-in for a real inference failure such as a CUDA error): the
    first pass raises, later ones run the real model."""
    real_transcribe = engine.transcribe
    calls = 0

    def failing_once(clip: Pcm, offset: int, prompt: str, language: str | None) -> Transcript:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected inference fault")
        return real_transcribe(clip, offset, prompt, language)

    monkeypatch.setattr(engine, "transcribe", failing_once)
    client = await make_client(response_wait_seconds=10.0)
    speech = load_synthetic("pauses").pcm
    status, body = await post(client, chunk_body(wav_bytes(speech[: 4 * SAMPLE_RATE]), 0))
    assert (status, body) == (200, {"segments": []})
    assert client.app[METRICS].passes.labels("error")._value.get() == 1
    words: list[str] = []
    for seq in range(1, 4):
        chunk = speech[(seq + 3) * SAMPLE_RATE : (seq + 4) * SAMPLE_RATE]
        status, body = await post(client, chunk_body(wav_bytes(chunk), seq))
        assert status == 200
        words += [w["word"] for s in body["segments"] for w in s["words"]]
    assert words, "the session recognised speech again after the fault"
