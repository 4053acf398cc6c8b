"""Real Chrome MediaRecorder blobs (tests/fixtures/chrome/, see its README.md) through the
service's own decoder: the facts of docs/client.md, checked on bytes Chromium really wrote.

The fixture: pauses.wav recorded with start(1000), seq 0-8 one-second blobs of the first WebM
stream, seq 9 the blob stop() flushed at the adaptive restart (in a pause), seq 10 the first
(2 s) blob of the new stream that start(2000) began."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import Any

import av
import numpy as np
import pytest

from isweep_backend.decode import SAMPLE_RATE, SessionDecoder
from isweep_backend.errors import UndecodableAudio
from tests.audio_tools import FIXTURES, Pcm, read_wav

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
