"""End to end through a real browser: headless Chromium records speech with MediaRecorder exactly
as the ISweep extension records a tab, and POSTs every blob to the running service exactly as
the extension does (tests/browser/capture.js). The service, the page and the speech file share
one origin (one aiohttp app), so the page needs no CORS.

Needs Debian's `chromium` on PATH; without it these tests fail (CI installs it)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import jiwer
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from aiohttp.web import Application

from isweep_backend.app import create_app
from isweep_backend.engine import Engine
from isweep_backend.settings import Settings
from isweep_backend.timeline import SAMPLE_RATE
from tests.audio_tools import FIXTURES, Pcm, read_wav
from tests.browser import chromium
from tests.test_streaming import (
    assert_well_formed,
    normalise,
    offline_transcript,
    wer,
    words_of,
)

pytestmark = pytest.mark.slow

EBML_B64 = "GkXfo"  # base64 of the EBML magic 1A 45 DF A3 that opens a WebM stream
# The page records this much silence after the speech before stop(), as a tab capture that
# is still running: the last sentence's words ride on the answers to those blobs. Nothing is
# sent after the last blob (the extension never does), so only the page's answers count.
TRAILING_SILENCE_SECONDS = 3.0
# Real-time streaming from a browser varies from run to run with the machine's load (when each
# pass runs against the blobs' arrival); 0.06 is ~4 words of long.wav, ~2 of pauses.wav.
WER_SLACK = 0.06
USER_ID = "browser-user"
TAB_ID = 42
ServerFactory = Callable[[Application], Awaitable[TestServer]]


@dataclass
class Capture:
    """What one browser recording did: the page's report and the service's answers."""

    report: dict[str, Any]
    blobs: list[bytes]  # by seq
    times: list[float]  # by seq: when the page had each blob, seconds after playback began
    segments: list[dict[str, Any]]  # in the order the page received them: nothing else
    reference: Pcm  # the recording as FFmpeg itself decodes it, each WebM stream in turn
    restarts: list[int]  # seqs of blobs that open a new WebM stream after seq 0


async def start_service(
    aiohttp_server: ServerFactory, engine: Engine, settings: Settings
) -> TestServer:
    # Chromium sends an Origin header even on a same-origin POST; the service lets its own
    # origin through whatever cors_origins says, so the default settings are tested here.
    app = create_app(settings, engine)
    app.router.add_static("/browser/", chromium.PAGE_DIR)
    app.router.add_static("/fixtures/", FIXTURES)
    return await aiohttp_server(app)


def decode_streams(blobs: list[bytes]) -> Pcm:
    """The recording at 16 kHz mono, decoded by FFmpeg's own WebM demuxer, one whole stream at
    a time (not by the service's incremental decoder): the truth the service's clock must keep."""
    streams: list[bytes] = []
    for blob in blobs:
        if blob.startswith(b"\x1a\x45\xdf\xa3") or not streams:
            streams.append(b"")
        streams[-1] += blob
    parts: list[Any] = []
    for data in streams:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        with av.open(io.BytesIO(data)) as container:
            for frame in container.decode(container.streams.audio[0]):
                parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32)


def locate(recorded: Pcm, wav: Pcm, wav_seconds: float, search_seconds: float = 1.0) -> float:
    """Where the second of `wav` that starts at `wav_seconds` lies in `recorded` (seconds)."""
    start = round(wav_seconds * SAMPLE_RATE)
    ref = wav[start : start + SAMPLE_RATE]
    lo = max(0, start - round(search_seconds * SAMPLE_RATE))
    hi = min(recorded.size, start + ref.size + round(search_seconds * SAMPLE_RATE))
    window = recorded[lo:hi]
    n = 1 << int(np.ceil(np.log2(window.size + ref.size)))
    corr = np.fft.irfft(np.fft.rfft(window, n) * np.conj(np.fft.rfft(ref, n)), n)
    lag = int(np.argmax(corr[: window.size - ref.size + 1]))
    return (lo + lag) / SAMPLE_RATE


async def capture(
    aiohttp_server: ServerFactory,
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    wav: str,
    restart_after_seconds: float | None = None,
    drop_stop_blob: bool = False,
) -> Capture:
    server = await start_service(aiohttp_server, engine, settings)
    audio_seconds = read_wav(FIXTURES / wav)[0].size / SAMPLE_RATE
    options = {
        "audioUrl": f"/fixtures/{wav}",
        "userId": USER_ID,
        "tabId": TAB_ID,
        "restartAfterSeconds": restart_after_seconds,
        "trailingSilenceSeconds": TRAILING_SILENCE_SECONDS,
        "keepBlobs": True,
        "dropStopBlob": drop_stop_blob,
    }
    async with chromium.launch(tmp_path / "profile") as page:
        await page.goto(str(server.make_url("/browser/capture.html")), "window.isweepReady")
        report: dict[str, Any] = await page.evaluate(
            f"isweepCapture({json.dumps(options)})",
            timeout=audio_seconds + TRAILING_SILENCE_SECONDS + 90,
        )
    assert not report["errors"], report["errors"]
    assert report["contextState"] == "running", report
    assert report["recorderMimeType"] == "audio/webm;codecs=opus"
    by_seq = sorted(report["blobs"], key=lambda b: b["seq"])
    assert [b["seq"] for b in by_seq] == list(range(report["lastSeq"] + 1))
    blobs = [base64.b64decode(b["b64"]) for b in by_seq]
    assert all(blobs), [len(b) for b in blobs]
    # The page keeps each response in the order it arrived, as the extension handles them.
    for response in report["responses"]:
        assert response["status"] == 200, response
        assert response["segments"] is not None, response
    assert len(report["responses"]) == len(blobs)
    segments = [s for r in report["responses"] for s in r["segments"]]
    assert blobs[0].startswith(b"\x1a\x45\xdf\xa3") and by_seq[0]["head"].startswith(EBML_B64)
    restarts = [seq for seq, blob in enumerate(blobs) if seq and blob[:4] == b"\x1a\x45\xdf\xa3"]
    times = [b["at"] - report["startedAt"] for b in by_seq]
    return Capture(report, blobs, times, segments, decode_streams(blobs), restarts)


def check_transcript(capture: Capture, engine: Engine, settings: Settings, text: str) -> float:
    """WER within 1.2x of an offline pass over the same recording plus WER_SLACK, and at most
    0.15; times monotonic over every response; no word reported twice."""
    hypothesis = " ".join(s["text"] for s in capture.segments)
    streamed = wer(text, hypothesis)
    offline = wer(text, offline_transcript(engine, settings, capture.reference))
    alignment = jiwer.process_words(normalise(text), normalise(hypothesis))
    # The extension restarts its recorder after three round trips in a row over 500 ms.
    slow = [r["receivedAt"] - r["sentAt"] > 0.5 for r in capture.report["responses"]]
    rtts = [r["receivedAt"] - r["sentAt"] for r in capture.report["responses"]]
    print(
        f"round trips: median {np.median(rtts):.3f} s, max {max(rtts):.3f} s, "
        f"over 0.5 s: {sum(slow)} of {len(rtts)}, "
        f"three in a row: {any(all(slow[i : i + 3]) for i in range(len(slow) - 2))}"
    )
    print(  # shown when a test fails: what the browser run measured
        f"blobs={[len(b) for b in capture.blobs]} restarts={capture.restarts} "
        f"streamed_wer={streamed:.3f} offline_wer={offline:.3f} "
        f"insertions={alignment.insertions} hypothesis={hypothesis!r} "
        f"wordless={[s for s in capture.segments if not any(c.isalnum() for c in s['text'])]}"
    )
    assert streamed <= min(1.2 * offline + WER_SLACK, 0.15), (hypothesis, streamed, offline)
    assert_well_formed(capture.segments, capture.reference.size / SAMPLE_RATE)
    # Each piece of speech once: a repeated word would be an insertion against the reference.
    assert alignment.insertions == 0, (hypothesis, alignment.insertions)
    return streamed


def sentences(name: str) -> list[dict[str, Any]]:
    meta: list[dict[str, Any]] = json.loads((FIXTURES / f"{name}.json").read_text())["sentences"]
    return meta


def first_word_at(words: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    return next(w for w in words if w["start_seconds"] >= seconds - 0.5)


async def test_chrome_recording_streams_like_the_extension(
    aiohttp_server: ServerFactory, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    wav, _ = read_wav(FIXTURES / "pauses.wav")
    got = await capture(aiohttp_server, engine, settings, tmp_path, "pauses.wav")
    assert got.restarts == []  # only blob 0 carries the WebM header
    assert abs(np.median(np.diff(got.times)) - 1.0) <= 0.2  # start(1000): a blob a second
    check_transcript(
        got, engine, settings, json.loads((FIXTURES / "pauses.json").read_text())["text"]
    )
    words = words_of(got.segments)
    for sentence in sentences("pauses"):
        at = locate(got.reference, wav, sentence["start_s"])
        print(f"sentence {sentence['start_s']:.3f} s at {at:.3f} s: {first_word_at(words, at)}")
        assert abs(first_word_at(words, at)["start_seconds"] - at) <= 0.5, (sentence, at, words)


async def test_adaptive_restart_keeps_the_session_clock(
    aiohttp_server: ServerFactory, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    wav, _ = read_wav(FIXTURES / "long.wav")
    half = wav.size / SAMPLE_RATE / 2
    got = await capture(aiohttp_server, engine, settings, tmp_path, "long.wav", half)
    # One restart: stop() flushed a last blob of the old stream, then a new header, seq going on.
    assert len(got.restarts) == 1, [len(b) for b in got.blobs]
    restart = got.restarts[0]
    assert 1 < restart < len(got.blobs) - 1
    assert abs(np.median(np.diff(got.times[:restart])) - 1.0) <= 0.2
    assert abs(np.median(np.diff(got.times[restart:])) - 2.0) <= 0.3  # start(2000)
    text = json.loads((FIXTURES / "long.json").read_text())["text"]
    check_transcript(got, engine, settings, text)
    words = words_of(got.segments)
    after = [s for s in sentences("long") if s["start_s"] > half + 1.0]
    assert after
    for sentence in after:
        at = locate(got.reference, wav, sentence["start_s"])
        print(f"sentence {sentence['start_s']:.3f} s at {at:.3f} s: {first_word_at(words, at)}")
        assert abs(at - sentence["start_s"]) <= 0.5  # Chromium lost no real time at the restart
        assert abs(first_word_at(words, at)["start_seconds"] - at) <= 0.5, (sentence, at, words)


async def test_a_restart_that_drops_the_stop_blob_keeps_words_on_the_video_clock(
    aiohttp_server: ServerFactory, engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    # Exactly the extension's restart: the blob stop() flushes is dropped, seq goes on, and
    # up to a second of audio never arrives. Later words must still be where the video is.
    from tests.test_chrome_blobs import lag_of, offline_words, offsets_from_truth

    wav, _ = read_wav(FIXTURES / "pauses.wav")
    restart_after = 4.6  # in the first pause, ~0.5 s into a blob interval
    got = await capture(
        aiohttp_server, engine, settings, tmp_path, "pauses.wav", restart_after, True
    )
    assert len(got.restarts) == 1 and got.report["droppedBytes"] > 0, got.report
    stream0 = decode_streams(got.blobs[: got.restarts[0]])
    delay = lag_of(stream0, wav, 1.0) / SAMPLE_RATE  # the recording against the WAV
    matched = offsets_from_truth(words_of(got.segments), offline_words(engine, settings), delay)
    print([(w, round(t, 2), round(d, 3)) for w, t, d in matched])
    after = [d for _w, t, d in matched if t > got.report["restartAt"]]
    assert len(after) >= 10, matched
    assert abs(float(np.median(after))) <= 0.15, after
