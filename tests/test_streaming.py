"""End to end: real speech, encoded like Chrome's MediaRecorder, cut at arbitrary bytes, sent
through the real HTTP app to the real model, in the orders a real network produces."""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import jiwer
import numpy as np
import pytest

from isweep_backend.engine import Engine
from isweep_backend.settings import Settings
from isweep_backend.timeline import SAMPLE_RATE
from tests.audio_tools import cut_blobs, encode_opus_stream
from tests.conftest import (
    Client,
    ClientFactory,
    Speech,
    chunk_body,
    load_real_speech,
    load_synthetic,
)

pytestmark = pytest.mark.slow
# The capture goes on after the speech: the words of the last sentence arrive with the
# answers to these blobs of silence (end of speech needs end_of_speech_seconds of it, then a
# pass). Nothing is resent after the last blob: the extension never does.
TRAILING_SILENCE_SECONDS = 5.0
# Streamed WER may exceed 1.2x offline by this many words: which windows the passes see depends
# on timing, and tiny.en sometimes hears "by email" as "my email" in one window, not another.
# (Closing the gap to offline is issue 10's work; bench/realtime.py measures it on real speech.)
SLACK_WORDS = 3
# Blobs held back up to 2 s reach the buffer in bursts of up to 3 s, so fewer passes see the
# audio grow, and which windows they see varies from run to run: on the 78-word script that
# cost 1 to 10 words (the passes heard "If you haven't" for "If you have any questions" in
# one run, not in the next). What the reorder buffer must get right (every blob decoded, in
# order, once) is checked exactly in test_reorder.py; here that the words still come through.
SLACK_WORDS_WHEN_SHUFFLED = 14
_NUMBERS = {"10": "ten", "mr": "mister"}


def normalise(text: str) -> str:
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^\w\s']", " ", text)
    return " ".join(_NUMBERS.get(w, w) for w in text.split())


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalise(reference), normalise(hypothesis) or "<empty>"))


def offline_transcript(engine: Engine, settings: Settings, pcm: np.ndarray) -> str:
    segments, _ = engine._model.transcribe(
        pcm,
        language="en",
        beam_size=engine.info.beam_size,
        vad_filter=False,
        condition_on_previous_text=False,
    )
    return " ".join(s.text for s in segments)


def padded(speech: Speech) -> np.ndarray:
    # The recorder keeps running after the speech: silence lets the end of speech be seen.
    silence = np.zeros(round(TRAILING_SILENCE_SECONDS * speech.rate), dtype=np.float32)
    return np.concatenate([speech.pcm, silence])


async def send(client: Client, seq: int, blob: bytes) -> list[dict[str, Any]]:
    resp = await client.post("/asr/stream", json=chunk_body(blob, seq))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    segments: list[dict[str, Any]] = body["segments"]
    return segments


async def replay(
    client: Client, order: list[tuple[int, bytes]], blob_seconds: float = 1.0
) -> list[Any]:
    """Send the blobs in `order` at the recorder's pace, one per `blob_seconds`, and collect
    only what their answers carry, as the extension does: it never sends anything after its
    last blob, so the words of the last sentence ride on the blobs of the trailing silence.
    (A replay faster than real time would let the machine's speed decide which audio each pass
    sees, and so which words come out.)"""
    loop = asyncio.get_running_loop()
    segments: list[Any] = []
    started = loop.time()
    for n, (seq, blob) in enumerate(order):
        await asyncio.sleep(max(0.0, started + n * blob_seconds - loop.time()))
        segments += await send(client, seq, blob)
    return segments


def words_of(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [w for s in segments for w in s["words"]]


def assert_well_formed(segments: list[dict[str, Any]], audio_seconds: float) -> None:
    previous_end = 0.0
    for segment in segments:
        assert segment["text"].strip()
        assert 0.0 <= segment["confidence"] <= 1.0
        for word in segment["words"]:
            assert previous_end <= word["start_seconds"] <= word["end_seconds"], word
            assert word["end_seconds"] <= audio_seconds + 0.1
            previous_end = word["end_seconds"]
        assert segment["start_seconds"] == segment["words"][0]["start_seconds"]
        assert segment["end_seconds"] == segment["words"][-1]["end_seconds"]


def assert_as_good_as_offline(
    segments: list[dict[str, Any]],
    text: str,
    engine: Engine,
    settings: Settings,
    pcm: np.ndarray,
    slack_words: int = SLACK_WORDS,
) -> None:
    """Streamed WER within 1.2x of the same model transcribing the same audio offline, and
    the answers well formed."""
    hypothesis = " ".join(s["text"] for s in segments)
    streamed = wer(text, hypothesis)
    offline = wer(text, offline_transcript(engine, settings, pcm))
    slack = slack_words / len(normalise(text).split())
    assert streamed <= 1.2 * offline + slack, (hypothesis, streamed, offline)
    assert_well_formed(segments, pcm.size / SAMPLE_RATE)


def order_for(case: str, blobs: list[bytes]) -> list[tuple[int, bytes]]:
    indexed = list(enumerate(blobs))
    rng = random.Random(11)
    if case == "shuffled":
        shuffled: list[tuple[int, bytes]] = []
        for start in range(0, len(indexed), 3):
            window = indexed[start : start + 3]
            rng.shuffle(window)
            shuffled += window
        return shuffled
    if case == "duplicates":
        return [item for item in indexed for _ in range(1 + (item[0] % 3 == 1))]
    return indexed


@pytest.fixture(scope="module")
def long_speech() -> Speech:
    return load_synthetic("long")


@pytest.mark.parametrize("case", ["in_order", "shuffled", "duplicates"])
async def test_streamed_transcript_is_as_good_as_offline(
    make_client: ClientFactory,
    engine: Engine,
    settings: Settings,
    long_speech: Speech,
    case: str,
) -> None:
    pcm = padded(long_speech)
    blobs = cut_blobs(encode_opus_stream(pcm, long_speech.rate), 1.0, seed=len(case))
    client = await make_client()
    segments = await replay(client, order_for(case, blobs))
    slack = SLACK_WORDS_WHEN_SHUFFLED if case == "shuffled" else SLACK_WORDS
    assert_as_good_as_offline(segments, long_speech.text, engine, settings, pcm, slack)
    # The last sentence arrived, to its last word, in answers to blobs the capture sent.
    heard = normalise(" ".join(s["text"] for s in segments)).split()
    assert heard[-4:] == normalise(long_speech.text).split()[-4:], heard[-8:]


async def test_real_human_speech_streams_as_well_as_offline(
    make_client: ClientFactory,
    engine: Engine,
    settings: Settings,
) -> None:
    speech = load_real_speech()
    pcm = padded(speech)
    client = await make_client()
    blobs = cut_blobs(encode_opus_stream(pcm, speech.rate), 1.0, seed=3)
    segments = await replay(client, list(enumerate(blobs)))
    assert_as_good_as_offline(segments, speech.text, engine, settings, pcm)


async def test_words_next_to_a_pause_are_timed_within_300_ms(
    make_client: ClientFactory,
) -> None:
    speech = load_synthetic("pauses")
    pcm = padded(speech)
    client = await make_client()
    blobs = cut_blobs(encode_opus_stream(pcm, speech.rate), 1.0, seed=4)
    words = words_of(await replay(client, list(enumerate(blobs))))
    assert_well_formed(
        [
            {
                "text": "x",
                "confidence": 1,
                "words": words,
                "start_seconds": words[0]["start_seconds"],
                "end_seconds": words[-1]["end_seconds"],
            }
        ],
        pcm.size / SAMPLE_RATE,
    )
    for pause_start, pause_end in speech.pauses:
        before = [w for w in words if w["end_seconds"] <= pause_start + 0.3]
        after = [w for w in words if w["start_seconds"] >= pause_end - 0.3]
        assert before and after
        assert abs(before[-1]["end_seconds"] - pause_start) <= 0.3, (before[-1], pause_start)
        assert abs(after[0]["start_seconds"] - pause_end) <= 0.3, (after[0], pause_end, words)


async def test_a_lost_blob_costs_only_its_own_audio_and_later_times_stay_true(
    make_client: ClientFactory,
    long_speech: Speech,
) -> None:
    pcm = padded(long_speech)
    blobs = cut_blobs(encode_opus_stream(pcm, long_speech.rate), 1.0, seed=8)
    lost = 16  # inside the fourth sentence (14.75 s to 18.53 s)
    order = [(seq, blob) for seq, blob in enumerate(blobs) if seq != lost]
    client = await make_client(reorder_wait_seconds=0.5)
    words = words_of(await replay(client, order))
    meta = load_synthetic("long")
    sentences = _sentences(meta)
    for text, start, end in sentences:
        if start <= lost + 1 and end >= lost - 1:
            continue  # the sentence that lost a second of audio
        heard = " ".join(w["word"] for w in words if start - 0.3 <= w["start_seconds"] <= end)
        assert wer(text, heard) <= 0.2, (text, heard)
    _last_text, last_start, _ = sentences[-1]
    first_of_last = next(w for w in words if w["start_seconds"] >= last_start - 0.5)
    assert abs(first_of_last["start_seconds"] - last_start) <= 0.3


def _sentences(speech: Speech) -> list[tuple[str, float, float]]:
    import json

    from tests.audio_tools import FIXTURES

    meta = json.loads((FIXTURES / f"{speech.name}.json").read_text())
    return [(s["text"], s["start_s"], s["end_s"]) for s in meta["sentences"]]


# The recorder restart is tested on real Chrome blobs of a restart made as the extension makes
# it (the stop() blob dropped), with its gap accounting: tests/test_chrome_blobs.py,
# test_words_after_a_restart_that_dropped_the_stop_blob_keep_the_video_clock. Splitting one
# signal into two encoded streams lost no time, so it kept the clock by construction.
