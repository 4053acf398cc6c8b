"""Real Chrome MediaRecorder blobs (tests/fixtures/chrome/, see its README.md) through the
service's own decoder: the facts of docs/client.md, checked on bytes Chromium really wrote.

The fixture: pauses.wav recorded with start(1000), seq 0-8 one-second blobs of the first WebM
stream, seq 9 the blob stop() flushed at the adaptive restart (in a pause), seq 10 the first
(2 s) blob of the new stream that start(2000) began.

tests/fixtures/chrome-restart/ is the restart as the extension really does it: the blob stop()
flushed is dropped, and each blob's arrival time is kept. With it: the lost span is filled
(estimated from arrivals), a skipped seq's gap is carried across the restart, and a process
restarted, or a session evicted, mid-capture picks the stream up where it is."""

from __future__ import annotations

import asyncio
import base64
import difflib
import hashlib
import io
import json
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from isweep_backend.audio.decode import SessionDecoder
from isweep_backend.engine import Engine
from isweep_backend.errors import UndecodableAudio
from isweep_backend.settings import Settings
from isweep_backend.timeline import SAMPLE_RATE
from tests.audio_tools import FIXTURES, Pcm, read_wav
from tests.conftest import Client, ClientFactory
from tests.support import service_of

CHROME = FIXTURES / "chrome"
MANIFEST: dict[str, Any] = json.loads((CHROME / "blobs.json").read_text())
BLOBS = [(CHROME / entry["file"]).read_bytes() for entry in MANIFEST["blobs"]]
RESTART = MANIFEST["restart_seq"]  # the first blob of the new stream
STOP = RESTART - 1  # the blob stop() flushed: the old stream's last
FIRST_STREAM = BLOBS[:RESTART]
EBML_MAGIC = bytes.fromhex("1a45dfa3")
CLUSTER_ID = bytes.fromhex("1f43b675")
SIMPLE_BLOCK_ID = 0xA3
ONE_SECOND = SAMPLE_RATE
TEN_MS = SAMPLE_RATE // 100


def decode_in_order(skip: int | None = None) -> list[Pcm]:
    """PCM per blob of the first stream; `skip` is a seq that never arrives."""
    decoder = SessionDecoder()
    out = []
    for seq, blob in enumerate(FIRST_STREAM):
        if seq == skip:
            decoder.note_gap(1)
            continue
        result = decoder.decode(blob)
        assert not result.restarted
        out.append(result.pcm)
    return out


def lag_of(moved: Pcm, reference: Pcm, at_seconds: float, search: int = 400) -> int:
    """Samples by which the half second at `at_seconds` of `reference` moved in `moved`."""
    start = round(at_seconds * SAMPLE_RATE)
    ref = reference[start : start + SAMPLE_RATE // 2]
    assert float(np.abs(ref).max()) > 0.05, "the window must hold speech"
    scores = [
        float(np.dot(moved[start + lag : start + lag + ref.size], ref))
        for lag in range(-search, search + 1)
    ]
    return int(np.argmax(scores)) - search


def test_the_fixture_is_what_its_manifest_says() -> None:
    assert [e["seq"] for e in MANIFEST["blobs"]] == list(range(len(BLOBS)))
    for entry, blob in zip(MANIFEST["blobs"], BLOBS, strict=True):
        assert len(blob) == entry["bytes"]
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"]
    assert sum(map(len, BLOBS)) < 200_000
    assert MANIFEST["chromium"].startswith("Chromium ")


def test_only_the_first_blob_of_a_stream_carries_the_webm_header() -> None:
    first = BLOBS[0]
    assert first.startswith(EBML_MAGIC)
    assert base64.b64encode(first).startswith(b"GkXfo")
    header = first[: first.index(CLUSTER_ID)]  # EBML header, Segment, Info, Tracks
    assert len(header) < 256
    assert b"A_OPUS" in header and b"OpusHead" in header
    for blob in FIRST_STREAM[1:]:
        assert not blob.startswith(EBML_MAGIC)
        assert not blob.startswith(CLUSTER_ID)  # blob boundaries are not Cluster boundaries
    assert BLOBS[RESTART].startswith(EBML_MAGIC)  # stop() + start(): a whole new stream


def test_each_blob_ends_with_the_id_of_the_block_that_the_next_blob_holds() -> None:
    # The recorder flushes in the middle of a SimpleBlock: its one-byte ID (A3) ends one
    # blob, its size and body open the next. Only stop() ends a stream at a block's end.
    for blob in FIRST_STREAM[:-1]:
        assert blob[-1] == SIMPLE_BLOCK_ID
    assert BLOBS[STOP][-1] != SIMPLE_BLOCK_ID
    assert BLOBS[STOP][0] & 0x80  # a one-byte EBML size: the SimpleBlock's body follows


def test_a_later_blob_alone_is_not_decodable() -> None:
    with pytest.raises(UndecodableAudio):
        SessionDecoder().decode(BLOBS[3])


def test_the_stream_is_stereo_48k_opus_in_60_ms_frames() -> None:
    with av.open(io.BytesIO(b"".join(FIRST_STREAM))) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        frames = list(container.decode(stream))
    assert {f.sample_rate for f in frames} == {48_000}
    assert {len(f.layout.channels) for f in frames} == {2}
    assert {f.samples for f in frames} == {2880}  # 60 ms


def test_one_second_blobs_decode_in_order_to_about_a_second_each() -> None:
    decoder = SessionDecoder()
    sizes = []
    for blob in FIRST_STREAM:
        result = decoder.decode(blob)
        assert not result.restarted and result.resynced_bytes == 0 and result.gap_fill_samples == 0
        sizes.append(result.pcm.size)
    for size in sizes[:STOP]:
        assert abs(size - ONE_SECOND) <= ONE_SECOND // 10, sizes
    # stop() flushed what was recorded since the last blob: a third of a second of silence.
    assert 0 < sizes[STOP] < ONE_SECOND // 2
    assert abs(sum(sizes) / SAMPLE_RATE - MANIFEST["restart_after_seconds"]) <= 0.1


def test_stereo_is_averaged_to_mono_at_the_recorded_level() -> None:
    pcm = np.concatenate(decode_in_order())
    wav, _ = read_wav(FIXTURES / "pauses.wav")
    expected = float(np.abs(wav[: pcm.size]).max())
    # Folding L+R with a resampler would lift the level ~1.41x, past full scale.
    assert abs(float(np.abs(pcm).max()) - expected) <= 0.1 * expected


def test_a_lost_blob_is_resynced_filled_and_later_audio_keeps_its_time() -> None:
    in_order = decode_in_order()
    lost = 2  # one second in the middle of the first sentence
    parts = decode_in_order(skip=lost)
    after = parts[lost]  # the blob after the gap: it opens inside a block it cannot use
    assert abs(after.size - 2 * ONE_SECOND) <= 2 * ONE_SECOND // 10  # fill + its own second
    whole, reference = np.concatenate(parts), np.concatenate(in_order)
    assert abs(whole.size - reference.size) <= TEN_MS
    # The second sentence (from 5.1 s), after the gap: within 10 ms of where it belongs. Chrome
    # stamps blocks from its capture clock in whole ms, so the fill is off by a few ms.
    assert abs(lag_of(whole, reference, 6.0)) <= TEN_MS


def test_the_restart_is_flagged_on_the_new_header_and_the_clock_goes_on() -> None:
    assert len(BLOBS[STOP]) < 300  # client.md: the stop() blob is tiny (58 to 253 bytes)
    decoder = SessionDecoder()
    before = sum(decoder.decode(blob).pcm.size for blob in FIRST_STREAM)
    result = decoder.decode(BLOBS[RESTART])
    assert result.restarted
    assert decoder.streams_started == 2
    # A 2 s blob of the new stream (start(2000)), after everything the old stream held.
    assert abs(result.pcm.size - 2 * ONE_SECOND) <= 2 * ONE_SECOND // 10
    assert abs(before / SAMPLE_RATE - MANIFEST["restart_after_seconds"]) <= 0.1


def test_the_new_streams_first_blob_opens_a_capture_on_its_own() -> None:
    result = SessionDecoder().decode(BLOBS[RESTART])
    assert not result.restarted
    assert abs(result.pcm.size - 2 * ONE_SECOND) <= 2 * ONE_SECOND // 10


# --- joining a capture mid-stream (a restarted process, an evicted session) -----------------


def test_a_decoder_allowed_to_join_mid_stream_resyncs_and_knows_where_it_is() -> None:
    in_order = np.concatenate(decode_in_order())
    join = 5  # the process that saw seqs 0-4 is gone; seq 5 opens inside a SimpleBlock
    decoder = SessionDecoder()
    decoder.allow_joining_mid_stream()
    parts = [decoder.decode(blob) for blob in FIRST_STREAM[join:]]
    assert not any(r.restarted for r in parts)
    assert parts[0].resynced_bytes > 0  # the partial block that opens the blob
    joined = np.concatenate([r.pcm for r in parts])
    # The stream's own clock (the first Cluster after the join) says where the audio begins,
    # to within a frame of where the whole stream, decoded in order, has it.
    assert decoder.joined_stream_seconds is not None
    start = round(decoder.joined_stream_seconds * SAMPLE_RATE)
    assert abs(joined.size - (in_order.size - start)) <= TEN_MS
    placed = np.concatenate([np.zeros(start, dtype=np.float32), joined])
    assert abs(lag_of(placed, in_order, 6.0)) <= TEN_MS  # inside the second sentence
    # A capture whose first blobs, header included, were waited for and given up on joins
    # the same way; without either, continuation bytes are refused (the test above).
    skipped = SessionDecoder()
    skipped.note_gap(join)
    assert skipped.decode(FIRST_STREAM[join]).pcm.size == parts[0].pcm.size


def test_a_joined_sessions_clock_starts_at_the_clients_count_or_the_streams_if_later() -> None:
    from isweep_backend.session import timeline_origin_seconds

    assert timeline_origin_seconds(10, 10.0, None) == 10.0
    assert timeline_origin_seconds(10, None, None) == 10.0  # seq x 1 s without the hint
    # Chrome's 1 s blobs hold 1.02 s: after a while its stream clock is ahead of the count.
    assert timeline_origin_seconds(300, 300.0, 306.1) == 306.1
    # After a recorder restart (the count says 2 blobs of 2 s) the stream clock began again:
    # 10 blobs of 1.02 s, half of what a restart loses, then the new stream's 4.2 s.
    assert timeline_origin_seconds(12, 14.0, 4.2) == pytest.approx(10.2 + 0.55 + 4.2)
    # Client claims are bounded by what seq blobs can hold.
    assert timeline_origin_seconds(3, 1e12, None) == 30.0
    assert timeline_origin_seconds(3, -5.0, None) == 0.0
    assert timeline_origin_seconds(3, None, 1e9) == 30.0


def test_a_mono_opus_stream_can_be_joined_mid_stream_too() -> None:
    # Chrome's packets are stereo; the decoder opened on a join takes its channel count from
    # the first packet's TOC byte (RFC 6716 3.1), so a mono stream decodes too.
    wav, rate = read_wav(FIXTURES / "pauses.wav")
    mono = _mono_webm_opus(wav[: 4 * rate], rate)
    decoder = SessionDecoder()
    decoder.allow_joining_mid_stream()
    pcm = np.concatenate([decoder.decode(blob).pcm for blob in mono[2:]])
    assert abs(pcm.size - (4 * rate - 2 * rate)) <= rate // 5
    assert float(np.abs(pcm).max()) > 0.1  # speech, not silence from a misread channel count


def _mono_webm_opus(pcm: Pcm, rate: int) -> list[bytes]:
    from fractions import Fraction

    from tests.audio_tools import _resample, cut_blobs

    buf = io.BytesIO()
    with av.open(buf, "w", format="webm", options={"live": "1"}) as out:
        stream = out.add_stream("libopus", rate=48_000, layout="mono")
        pcm48 = _resample(pcm, rate, 48_000)
        for i in range(0, pcm48.size, 2880):
            frame = av.AudioFrame.from_ndarray(
                pcm48[i : i + 2880].reshape(1, -1), format="flt", layout="mono"
            )
            frame.sample_rate, frame.pts, frame.time_base = 48_000, i, Fraction(1, 48_000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = buf.getvalue()
    with av.open(io.BytesIO(data)) as check:
        assert len(check.streams.audio[0].layout.channels) == 1
    return cut_blobs(data, 1.0, seed=4)


# --- a recorder restart as the extension does it (tests/fixtures/chrome-restart/) -----------

RESTART_DIR = FIXTURES / "chrome-restart"
RESTART_MANIFEST: dict[str, Any] = json.loads((RESTART_DIR / "blobs.json").read_text())
RESTART_BLOBS = [(RESTART_DIR / e["file"]).read_bytes() for e in RESTART_MANIFEST["blobs"]]
SENT_AT = [float(e["sent_at_seconds"]) for e in RESTART_MANIFEST["blobs"]]
NEW_STREAM = RESTART_MANIFEST["restart_seq"]


def ffmpeg_decode(data: bytes) -> Pcm:
    """One whole WebM stream as FFmpeg's own demuxer and decoder read it, 16 kHz mono."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    parts = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(container.streams.audio[0]):
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32)


def true_restart_loss_seconds() -> float:
    """The audio the restart lost (dropped stop() blob + recorder stop time), measured: where
    the source WAV lies in the first stream and in the second, by cross-correlation."""
    wav, _ = read_wav(FIXTURES / "pauses.wav")
    first = ffmpeg_decode(b"".join(RESTART_BLOBS[:NEW_STREAM]))
    second = ffmpeg_decode(b"".join(RESTART_BLOBS[NEW_STREAM:]))
    one_s = lag_of(first, wav, 1.0)  # the recording's delay against the WAV
    second_start = 6.0 - _position(second, wav, 6.0)  # WAV time of the new stream's start
    return second_start + one_s / SAMPLE_RATE - first.size / SAMPLE_RATE


def _position(recorded: Pcm, wav: Pcm, wav_seconds: float) -> float:
    ref = wav[round(wav_seconds * SAMPLE_RATE) :][: SAMPLE_RATE // 2]
    scores = np.correlate(recorded, ref, mode="valid")
    return int(np.argmax(scores)) / SAMPLE_RATE


def test_the_restart_fixture_is_what_its_manifest_says() -> None:
    entries = RESTART_MANIFEST["blobs"]
    assert [e["seq"] for e in entries] == list(range(len(RESTART_BLOBS)))
    for entry, blob in zip(entries, RESTART_BLOBS, strict=True):
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"]
    assert sum(map(len, RESTART_BLOBS)) < 300_000
    starts = [seq for seq, blob in enumerate(RESTART_BLOBS) if blob.startswith(EBML_MAGIC)]
    assert starts == [0, NEW_STREAM]
    # The stop() blob was not sent: seq has no hole, but a blob's worth of time passed.
    assert RESTART_MANIFEST["dropped_stop_blob"]["bytes"] > 0
    assert SENT_AT[NEW_STREAM] - SENT_AT[NEW_STREAM - 1] > 2.3


def test_the_restarts_lost_audio_is_estimated_from_arrivals_within_50_ms() -> None:
    from isweep_backend.session import restart_fill_samples

    lost = true_restart_loss_seconds()
    assert 0.3 < lost < 1.1, lost  # what the recording lost, as docs/client.md says
    decoder = SessionDecoder()
    for blob in RESTART_BLOBS[:NEW_STREAM]:
        decoder.decode(blob)
    result = decoder.decode(RESTART_BLOBS[NEW_STREAM])
    assert result.restart is not None and result.restart.carried_gap_samples == 0
    new_audio = result.pcm.size - result.restart.at_sample
    gap = SENT_AT[NEW_STREAM] - SENT_AT[NEW_STREAM - 1]
    fill = restart_fill_samples(result.restart, gap, new_audio)
    assert abs(fill / SAMPLE_RATE - lost) <= 0.05, (fill / SAMPLE_RATE, lost)


def test_a_gap_just_before_a_restart_is_carried_across_it() -> None:
    from isweep_backend.session import restart_fill_samples

    decoder = SessionDecoder()
    for blob in RESTART_BLOBS[: NEW_STREAM - 1]:
        decoder.decode(blob)
    decoder.note_gap(1)  # the last blob of the old stream never came
    result = decoder.decode(RESTART_BLOBS[NEW_STREAM])
    assert result.restarted and result.restart is not None
    carried = result.restart.carried_gap_samples
    assert abs(carried - 1.02 * SAMPLE_RATE) <= 0.1 * SAMPLE_RATE, carried
    # The arrivals span the skipped blob and the dropped one: both are filled, no more.
    gap = SENT_AT[NEW_STREAM] - SENT_AT[NEW_STREAM - 2]
    new_audio = result.pcm.size - result.restart.at_sample
    fill = restart_fill_samples(result.restart, gap, new_audio)
    expected = 1.02 + true_restart_loss_seconds()
    assert abs(fill / SAMPLE_RATE - expected) <= 0.1, (fill / SAMPLE_RATE, expected)


def test_a_session_joined_after_a_restart_starts_where_the_first_process_had_its_audio() -> None:
    # Another process (a failover, a restart) gets the capture mid-stream after the recorder
    # restart. Its clock must continue the first process's, or the extension drops its words
    # as going backwards: the client's count alone was 0.58 to 0.74 s behind here, and falls
    # further behind the longer the capture runs.
    from isweep_backend.session import restart_fill_samples, timeline_origin_seconds

    first_process = SessionDecoder()
    timeline, at = [], 0
    for seq, blob in enumerate(RESTART_BLOBS):
        timeline.append(at / SAMPLE_RATE)
        result = first_process.decode(blob)
        at += result.pcm.size
        if result.restart is not None:
            gap = SENT_AT[seq] - SENT_AT[seq - 1]
            new_audio = result.pcm.size - result.restart.at_sample
            at += restart_fill_samples(result.restart, gap, new_audio)
    counts = extension_chunk_starts(RESTART_BLOBS)
    for seq in range(NEW_STREAM + 1, len(RESTART_BLOBS)):
        joined = SessionDecoder()
        joined.allow_joining_mid_stream()
        joined.decode(RESTART_BLOBS[seq])
        origin = timeline_origin_seconds(seq, counts[seq], joined.joined_stream_seconds)
        # Off by what this restart lost against the middle guess: 0.09 s here, 0.55 at most.
        assert abs(origin - timeline[seq]) <= 0.3, (seq, origin, timeline[seq])


# --- through the real app and model, at the pace the blobs were recorded --------------------

Post = Callable[[int, bytes, float], Awaitable[list[dict[str, Any]]]]


def body_of(seq: int, blob: bytes, chunk_start: float) -> dict[str, Any]:
    return {
        "user_id": "chrome-user",
        "tab_id": 9,
        "seq": seq,
        "chunk_start_seconds": chunk_start,
        "mime_type": "audio/webm;codecs=opus",
        "audio_b64": base64.b64encode(blob).decode(),
    }


def extension_chunk_starts(blobs: list[bytes]) -> list[float]:
    """chunk_start_seconds as the extension counts it: the interval per sent blob, 1 s then
    2 s after the restart (the dropped stop() blob is not counted)."""
    starts, at, interval = [], 0.0, 1.0
    for seq, blob in enumerate(blobs):
        if seq and blob.startswith(EBML_MAGIC):
            interval = 2.0
        starts.append(at)
        at += interval
    return starts


async def paced(
    post: Post, blobs: list[bytes], sent_at: list[float], seqs: Sequence[int]
) -> list[Any]:
    """POST `seqs` at the moments the page had them (relative to the first), overlapping as
    the extension's requests do; returns every segment, in the order the answers came."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() - sent_at[seqs[0]]
    starts = extension_chunk_starts(blobs)
    answers: list[list[dict[str, Any]]] = []

    async def one(seq: int) -> None:
        await asyncio.sleep(max(0.0, t0 + sent_at[seq] - loop.time()))
        answers.append(await post(seq, blobs[seq], starts[seq]))

    await asyncio.gather(*(one(seq) for seq in seqs))
    return [s for answer in answers for s in answer]


def client_post(client: Client) -> Post:
    async def post(seq: int, blob: bytes, chunk_start: float) -> list[dict[str, Any]]:
        resp = await client.post("/asr/stream", json=body_of(seq, blob, chunk_start))
        assert resp.status == 200, await resp.text()
        segments: list[dict[str, Any]] = (await resp.json())["segments"]
        return segments

    return post


def http_post(http: aiohttp.ClientSession, url: str) -> Post:
    async def post(seq: int, blob: bytes, chunk_start: float) -> list[dict[str, Any]]:
        async with http.post(url, json=body_of(seq, blob, chunk_start)) as resp:
            assert resp.status == 200, await resp.text()
            segments: list[dict[str, Any]] = (await resp.json())["segments"]
            return segments

    return post


def words(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [w for s in segments for w in s["words"]]


def norm(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum() or c == "'")


def offline_words(engine: Engine, settings: Settings) -> list[tuple[str, float, float]]:
    """The source WAV's words and times, from the same model run offline over the whole file:
    the true positions, on the WAV's clock."""
    wav, _ = read_wav(FIXTURES / "pauses.wav")
    segments, _ = engine._model.transcribe(
        wav,
        language="en",
        beam_size=engine.info.beam_size,
        vad_filter=False,
        condition_on_previous_text=False,
        word_timestamps=True,
    )
    return [(norm(w.word), w.start, w.end) for s in segments for w in s.words or []]


def offsets_from_truth(
    streamed: list[dict[str, Any]], truth: list[tuple[str, float, float]], delay: float
) -> list[tuple[str, float, float]]:
    """(word, true start on the session clock, streamed start minus it) for each streamed
    word matched to the offline transcript."""
    got = [norm(w["word"]) for w in streamed]
    matcher = difflib.SequenceMatcher(a=got, b=[t[0] for t in truth], autojunk=False)
    out = []
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            word = streamed[block.a + k]
            true_start = truth[block.b + k][1] + delay
            out.append((got[block.a + k], true_start, word["start_seconds"] - true_start))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("lost", [None, NEW_STREAM - 1], ids=["all_sent", "last_before_lost"])
async def test_words_after_a_restart_that_dropped_the_stop_blob_keep_the_video_clock(
    make_client: ClientFactory, engine: Engine, settings: Settings, lost: int | None
) -> None:
    # With `lost`, the old stream's last blob never arrives either: the gap it leaves is
    # skipped after reorder_wait_seconds and must be carried across the restart.
    client = await make_client()
    seqs = [seq for seq in range(len(RESTART_BLOBS)) if seq != lost]
    streamed = words(await paced(client_post(client), RESTART_BLOBS, SENT_AT, seqs))
    wav, _ = read_wav(FIXTURES / "pauses.wav")
    delay = lag_of(ffmpeg_decode(b"".join(RESTART_BLOBS[:NEW_STREAM])), wav, 1.0) / SAMPLE_RATE
    matched = offsets_from_truth(streamed, offline_words(engine, settings), delay)
    print([(w, round(t, 2), round(d, 3)) for w, t, d in matched])
    restart_at = RESTART_MANIFEST["restart_called_at_seconds"]
    after = [d for _w, t, d in matched if t > restart_at]
    before = [d for _w, t, d in matched if t < restart_at]
    assert len(after) >= 10 and len(before) >= 5, matched
    # The timeline after the restart is where the video is: the dropped ~0.6 s (and the lost
    # seq's 1.02 s) are accounted for.
    assert abs(float(np.median(after))) <= 0.15, after
    assert abs(float(np.median(after)) - float(np.median(before))) <= 0.15, (before, after)


@pytest.mark.slow
async def test_a_first_blob_with_only_the_header_still_starts_the_clock_at_zero(
    make_client: ClientFactory, engine: Engine, settings: Settings
) -> None:
    # seq 0 holds the header and no audio (a recorder may flush that early): the session saw
    # its capture's start, so its clock starts at 0, not at seq 1's chunk_start_seconds.
    header = BLOBS[0].index(CLUSTER_ID)
    blobs = [BLOBS[0][:header], BLOBS[0][header:] + BLOBS[1], *BLOBS[2:STOP]]
    sent_at = [float(e["sent_at_seconds"]) for e in MANIFEST["blobs"]][1:STOP]
    client = await make_client()
    streamed = words(await paced(client_post(client), blobs, [0.0, *sent_at], range(len(blobs))))
    wav, _ = read_wav(FIXTURES / "pauses.wav")
    delay = lag_of(np.concatenate(decode_in_order()), wav, 1.0) / SAMPLE_RATE
    matched = offsets_from_truth(streamed, offline_words(engine, settings), delay)
    assert len(matched) >= 8, (streamed, matched)
    assert abs(float(np.median([d for _w, _t, d in matched]))) <= 0.15, matched


@pytest.mark.slow
async def test_a_new_process_whose_first_blob_is_a_restart_header_goes_on_from_the_count(
    make_client: ClientFactory,
) -> None:
    # The old process had seqs 0-9; the new one's first blob is seq 10, the first blob of the
    # stream start(2000) began: it has a header, but the capture is 10 blobs old.
    client = await make_client()
    await client_post(client)(RESTART, BLOBS[RESTART], float(RESTART))
    registry = service_of(client.app).registry
    session = registry.get(("chrome-user", 9))
    assert session is not None
    assert session.ring.start == RESTART * SAMPLE_RATE  # not 0: no word goes backwards
    assert abs(len(session.ring) - 2 * ONE_SECOND) <= 2 * ONE_SECOND // 10


@pytest.mark.slow
async def test_a_session_evicted_mid_capture_resumes_on_the_next_blob_in_time_order(
    make_client: ClientFactory, engine: Engine, settings: Settings
) -> None:
    client = await make_client(session_ttl_seconds=2.5)  # > the 2 s blobs
    registry = service_of(client.app).registry
    sent_at = [float(e["sent_at_seconds"]) for e in MANIFEST["blobs"]]
    post = client_post(client)
    first = words(await paced(post, BLOBS, sent_at, range(5)))
    for _ in range(100):  # the recorder goes on, the session is evicted (the TTL)
        if not len(registry):
            break
        await asyncio.sleep(0.1)
    assert not len(registry)
    # seq 5 opens inside a SimpleBlock of a stream whose header the evicted session had.
    resumed = words(await paced(post, BLOBS, sent_at, range(5, len(BLOBS))))
    assert first and resumed
    # Never backwards: the extension drops a word more than 0.25 s before the last it kept.
    assert resumed[0]["start_seconds"] >= first[-1]["end_seconds"]
    wav, _ = read_wav(FIXTURES / "pauses.wav")
    delay = lag_of(np.concatenate(decode_in_order()), wav, 1.0) / SAMPLE_RATE
    matched = offsets_from_truth(resumed, offline_words(engine, settings), delay)
    print([(w, round(t, 2), round(d, 3)) for w, t, d in matched])
    assert len(matched) >= 8, (resumed, matched)
    # The stream's own clock placed the resumed session, so its words keep their true times.
    assert abs(float(np.median([d for _w, _t, d in matched]))) <= 0.15, matched


@pytest.mark.slow
async def test_a_restarted_process_picks_the_capture_up_mid_stream() -> None:
    from bench.service import wait_ready_async
    from tests.test_cli import start_service

    restart_after = NEW_STREAM + 2  # the old process saw seqs 0-5; 6 on are headerless
    sent: list[dict[str, Any]] = []
    got: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        for seqs, out in ((range(restart_after), sent), (range(restart_after, 10), got)):
            proc, base = start_service()
            try:
                await wait_ready_async(http, base, 60, proc)
                post = http_post(http, f"{base}/asr/stream")
                out += words(await paced(post, RESTART_BLOBS, SENT_AT, seqs))
                async with http.get(f"{base}/metrics") as resp:
                    lag = _histogram(await resp.text(), "isweep_word_emit_lag_seconds")
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.communicate, timeout=30)
    print("sent", [(w["word"], w["start_seconds"]) for w in sent])
    print("got", [(w["word"], w["start_seconds"]) for w in got], lag)
    assert sent and got, (sent, got)
    # Times go on from those the first process sent: the extension keeps every word.
    assert got[0]["start_seconds"] >= sent[-1]["end_seconds"], (sent[-1], got)
    text = " ".join(norm(w["word"]) for w in got)
    assert "remember" in text and "windows" in text, text  # the last sentence, heard
    # The new process answered with words in the capture's own answers, no resends: with 2 s
    # blobs and two passes to agree, a word comes back about one blob (2 s of audio) after
    # its own, ~3 s on an idle machine. Bounds generous for a busy one: all within 7.5 s,
    # half within 5 s. (Before, the new process answered [] for good.)
    assert lag["count"] >= len(got), lag
    assert lag["le_7.5"] == lag["count"] and lag["le_5.0"] >= lag["count"] / 2, lag


def _histogram(exposition: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == f"{name}_count":
                out["count"] = sample.value
            elif sample.name == f"{name}_bucket":
                out[f"le_{float(sample.labels['le'])}"] = sample.value
    return out
