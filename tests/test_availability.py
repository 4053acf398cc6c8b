"""Availability through the real app and the real model: overload that clears when the service
goes idle, pass workers that survive errors and report their liveness, and a start-up that
accepts audio while the model loads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from isweep_backend.app import create_app
from isweep_backend.keys import METRICS, RUNTIME
from isweep_backend.scheduler import PassScheduler
from isweep_backend.settings import Settings
from isweep_backend.timeline import SAMPLE_RATE
from tests.audio_tools import cut_blobs, encode_opus_stream, wav_bytes
from tests.conftest import Client, ClientFactory, chunk_body, load_synthetic
from tests.support import service_of

# Short enough that no request of these tests adds a pass: it only asks for admission.
QUIET = wav_bytes(np.zeros(SAMPLE_RATE // 4, dtype=np.float32))


async def post(client: Client, payload: Any) -> tuple[int, Any]:
    resp = await client.post("/asr/stream", json=payload)
    return resp.status, await resp.json()


def words_of(body: Any) -> list[dict[str, Any]]:
    return [w for s in body.get("segments", []) for w in s["words"]]


def scheduler_of(client: Client) -> PassScheduler:
    return service_of(client.app).scheduler


async def test_overload_clears_within_seconds_once_the_service_is_idle(
    make_client: ClientFactory,
) -> None:
    """Any real pass over 8 s of speech is longer than the 10 ms limit, so one pass sheds new
    sessions; then nothing runs, and a new session must be admitted within a few seconds."""
    client = await make_client(overload_pass_cycle_seconds=0.01, response_wait_seconds=10.0)
    speech = load_synthetic("long").pcm
    status, _ = await post(client, chunk_body(wav_bytes(speech[: 8 * SAMPLE_RATE]), 0, tab_id=1))
    assert status == 200
    scheduler = scheduler_of(client)
    assert scheduler.running == 0 and scheduler.depth == 0
    status, body = await post(client, chunk_body(QUIET, 0, tab_id=2))
    assert (status, body["error"]["code"]) == (503, "overloaded")
    idle_from = time.monotonic()
    admitted_after = None
    while time.monotonic() - idle_from < 15.0:
        await asyncio.sleep(0.2)
        status, _ = await post(client, chunk_body(QUIET, 0, tab_id=2))
        if status == 200:
            admitted_after = time.monotonic() - idle_from
            break
        assert status == 503
    assert admitted_after is not None, "still refused after 15 s of idleness"
    assert admitted_after < 10.0


async def test_a_new_capture_in_a_tab_is_admitted_while_new_sessions_are_shed(
    make_client: ClientFactory,
) -> None:
    """One worker busy with a long pass and a session queued behind it: the service sheds new
    sessions. A new capture (seq 0, another header) in a tab that has a session replaces it."""
    # No request waits for its pass, so all of this happens early in the long pass.
    client = await make_client(
        overload_pass_cycle_seconds=0.01, inference_workers=1, response_wait_seconds=0.0
    )
    long_speech = load_synthetic("long").pcm
    await post(client, chunk_body(wav_bytes(long_speech[: 30 * SAMPLE_RATE]), 0, tab_id=9))
    scheduler = scheduler_of(client)
    assert scheduler.running == 1, "the long pass ended before the test could queue behind it"
    speech = load_synthetic("pauses").pcm
    first = cut_blobs(encode_opus_stream(speech[: 3 * SAMPLE_RATE], SAMPLE_RATE), 1.0)
    second = cut_blobs(encode_opus_stream(speech[SAMPLE_RATE:], SAMPLE_RATE), 1.0)
    assert (await post(client, chunk_body(first[0] + first[1], 0, tab_id=1)))[0] == 200
    queued_by = time.perf_counter()  # its pass was queued before the answer
    registry = service_of(client.app).registry
    old = registry.get(("user-1", 1))
    assert old is not None and scheduler.pending(old)
    # Until the queued pass has waited twice the limit (the long pass is still running).
    await asyncio.sleep(max(0.0, 0.02 - (time.perf_counter() - queued_by)))
    status, body = await post(client, chunk_body(QUIET, 0, tab_id=5))
    assert (status, body["error"]["code"]) == (503, "overloaded")
    status, _ = await post(client, chunk_body(second[0], 0, tab_id=1))
    assert status == 200, "the tab's new capture was refused"
    new = registry.get(("user-1", 1))
    assert new is not None and new is not old and old.closed
    assert client.app[METRICS].sessions_evicted.labels("new_capture")._value.get() == 1


async def test_an_error_around_a_pass_answers_its_request_and_the_worker_goes_on(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection (a stand-in for a bug in the code around a pass): a metric raises once
    after the real pass, outside run_pass."""
    client = await make_client(inference_workers=1, response_wait_seconds=10.0)
    histogram = client.app[METRICS].pass_audio
    real_observe = histogram.observe
    calls = 0

    def failing_once(amount: float, exemplar: Any = None) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected fault around a pass")
        real_observe(amount, exemplar)

    monkeypatch.setattr(histogram, "observe", failing_once)
    speech = load_synthetic("pauses").pcm
    status, body = await post(client, chunk_body(wav_bytes(speech[: 4 * SAMPLE_RATE]), 0))
    assert (status, body) == (200, {"segments": []})
    assert client.app[METRICS].passes.labels("error")._value.get() == 1
    words: list[str] = []
    for seq in range(1, 4):
        chunk = speech[(seq + 3) * SAMPLE_RATE : (seq + 4) * SAMPLE_RATE]
        status, body = await post(client, chunk_body(wav_bytes(chunk), seq))
        assert status == 200
        words += [w["word"] for w in words_of(body)]
    assert words, "recognition stopped after the fault"
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["pass_workers_alive"] == 1


class WorkerKilled(BaseException):
    """Injected: an exception no `except Exception` guard catches (like a cancellation)."""


async def test_a_dead_worker_shows_in_readyz_and_metrics_and_is_replaced(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(inference_workers=1, response_wait_seconds=10.0)
    metrics = client.app[METRICS]
    histogram = metrics.pass_audio
    real_observe = histogram.observe
    calls = 0

    def killing_once(amount: float, exemplar: Any = None) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise WorkerKilled
        real_observe(amount, exemplar)

    monkeypatch.setattr(histogram, "observe", killing_once)
    speech = load_synthetic("pauses").pcm
    status, body = await post(client, chunk_body(wav_bytes(speech[: 4 * SAMPLE_RATE]), 0))
    # The request is answered when its pass dies, not at the end of its 10 s wait.
    assert (status, body) == (200, {"segments": []})
    # The replacement comes 2 s after the death; this probe follows the answer at once.
    ready = await client.get("/readyz")
    answer = await ready.json()
    assert ready.status == 503, answer
    assert answer["status"] == "degraded" and answer["pass_workers_alive"] == 0
    assert "pass workers are down" in answer["error"]
    text = await (await client.get("/metrics")).text()
    assert "isweep_pass_workers_alive 0.0" in text and "isweep_pass_workers 1.0" in text
    assert metrics.pass_worker_restarts._value.get() == 1
    for _ in range(100):
        ready = await client.get("/readyz")
        if ready.status == 200:
            break
        await asyncio.sleep(0.1)
    assert ready.status == 200 and (await ready.json())["pass_workers_alive"] == 1
    words: list[str] = []
    for seq in range(1, 4):
        chunk = speech[(seq + 3) * SAMPLE_RATE : (seq + 4) * SAMPLE_RATE]
        status, body = await post(client, chunk_body(wav_bytes(chunk), seq))
        assert status == 200
        words += [w["word"] for w in words_of(body)]
    assert words, "the replacement worker does not recognise"


async def test_a_pass_that_ends_after_stop_queues_nothing(make_client: ClientFactory) -> None:
    """Audio arrives during a pass, then the scheduler stops (as on SIGTERM): the pass finishes,
    and its session is not queued again behind a stopped scheduler."""
    client = await make_client(inference_workers=1, response_wait_seconds=0.0)
    speech = load_synthetic("long").pcm
    await post(client, chunk_body(wav_bytes(speech[: 20 * SAMPLE_RATE]), 0))
    scheduler = scheduler_of(client)
    assert scheduler.running == 1
    await post(client, chunk_body(wav_bytes(speech[20 * SAMPLE_RATE : 22 * SAMPLE_RATE]), 1))
    registry = service_of(client.app).registry
    session = registry.get(("user-1", 7)) if registry is not None else None
    assert session is not None and session.ring.end == 22 * SAMPLE_RATE
    await scheduler.stop(30.0)
    assert scheduler.running == 0 and session.passes == 1
    assert scheduler.depth == 0 and not scheduler.pending(session)


AppClientFactory = Callable[..., Awaitable[Client]]


async def test_chunks_sent_while_the_model_loads_are_buffered_and_transcribed_later(
    aiohttp_client: AppClientFactory, settings: Settings
) -> None:
    """The app loads its own model (about 2 s), as the CLI does; the first four blobs (the
    first sentence) arrive while it loads."""
    client = await aiohttp_client(create_app(settings))
    runtime = client.app[RUNTIME]
    speech = load_synthetic("long")
    blobs = cut_blobs(encode_opus_stream(speech.pcm[: 12 * SAMPLE_RATE], SAMPLE_RATE), 1.0)
    ready = await client.get("/readyz")
    assert ready.status == 503 and (await ready.json())["status"] == "loading"
    for seq in range(4):
        assert await post(client, chunk_body(blobs[seq], seq)) == (200, {"segments": []})
    assert runtime.engine is None, "the model loaded before the test could send early audio"
    for _ in range(300):
        if (await client.get("/readyz")).status == 200:
            break
        await asyncio.sleep(0.1)
    words: list[dict[str, Any]] = []
    for seq in range(4, len(blobs)):
        status, body = await post(client, chunk_body(blobs[seq], seq))
        assert status == 200
        words += words_of(body)
        await asyncio.sleep(0.3)
    early = {w["word"].strip(".,").lower() for w in words if w["end_seconds"] < 4.5}
    assert {"morning", "everyone", "meeting"} <= early, words


async def test_audio_buffered_while_the_model_loads_gets_its_pass_without_another_blob(
    aiohttp_client: AppClientFactory, settings: Settings
) -> None:
    """A whole file (or the last blob of a capture) sent while the model loads: nothing more
    comes to trigger a pass, so the model's arrival must (found with the README's curl)."""
    client = await aiohttp_client(create_app(settings))
    runtime = client.app[RUNTIME]
    speech = load_synthetic("long")
    blobs = cut_blobs(encode_opus_stream(speech.pcm[: 8 * SAMPLE_RATE], SAMPLE_RATE), 8.0)
    assert await post(client, chunk_body(blobs[0], 0)) == (200, {"segments": []})
    assert runtime.engine is None, "the model loaded before the test could send early audio"
    session = service_of(client.app).registry.get(("user-1", 7))
    assert session is not None
    for _ in range(600):
        if session.passes:
            break
        await asyncio.sleep(0.1)
    assert session.passes >= 1
    assert session.processed_end == session.ring.end


async def test_a_model_that_failed_to_load_answers_503_with_the_reason(
    aiohttp_client: AppClientFactory, settings: Settings, tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(replace(settings, model=str(tmp_path / "none"))))
    for _ in range(100):
        ready = await client.get("/readyz")
        if (await ready.json())["status"] == "failed":
            break
        await asyncio.sleep(0.05)
    assert ready.status == 503
    status, body = await post(client, chunk_body(QUIET, 0))
    assert status == 503 and body["error"]["code"] == "model_not_ready"
    assert "failed to load" in body["error"]["message"]
    assert (await client.get("/healthz")).status == 503
