"""Streaming decode of real encoder output: gapless, order-sensitive, resilient."""

from __future__ import annotations

import io
import itertools

import av
import numpy as np
import pytest

from isweep_backend.audio.decode import MonoResampler, SessionDecoder, frame_to_mono
from isweep_backend.errors import UndecodableAudio
from isweep_backend.timeline import SAMPLE_RATE
from tests.audio_tools import cut_blobs, encode_file, encode_opus_stream, wav_bytes
from tests.conftest import load_synthetic


@pytest.fixture(scope="module")
def speech_pcm() -> np.ndarray:
    return load_synthetic("pauses").pcm


def ffmpeg_decode(stream: bytes) -> np.ndarray:
    """FFmpeg's own demuxer and decoder over a whole WebM/Ogg stream: the reference that the
    streaming decoder must match (the whole-file path accepts no WebM or Ogg)."""
    with av.open(io.BytesIO(stream)) as container:
        audio = container.streams.audio[0]
        resampler = MonoResampler(audio.codec_context.sample_rate)
        parts = [resampler.resample(frame_to_mono(f)) for f in container.decode(audio)]
    return np.concatenate([*parts, resampler.flush()])


def _stream_decode(blobs: list[bytes]) -> np.ndarray:
    decoder = SessionDecoder()
    return np.concatenate([decoder.decode(b).pcm for b in blobs])


@pytest.mark.parametrize("container", ["webm", "ogg"])
def test_blobs_cut_anywhere_decode_identically_to_the_whole_stream(
    speech_pcm: np.ndarray, container: str
) -> None:
    stream = encode_opus_stream(speech_pcm, SAMPLE_RATE, container=container)
    whole = ffmpeg_decode(stream)
    streamed = _stream_decode(cut_blobs(stream, 1.0, seed=5))
    # A live stream never says where it ends, so the padding of the last 60 ms Opus frame is
    # kept, where a file decode trims it. FFmpeg's file decode uses its own Opus decoder and
    # the stream libopus, so samples agree to float rounding, on the same timeline.
    assert 0 <= streamed.size - whole.size <= 0.06 * SAMPLE_RATE
    n = min(streamed.size, whole.size)
    np.testing.assert_allclose(streamed[:n], whole[:n], atol=0.01)
    # Where the cuts fall changes nothing at all.
    one_blob = SessionDecoder().decode(stream).pcm
    np.testing.assert_array_equal(streamed, one_blob)


def test_ogg_blobs_cut_at_page_starts_continue_the_stream(speech_pcm: np.ndarray) -> None:
    # A blob that starts with "OggS" is a new stream only if that page begins one (the BOS
    # flag); any other page continues the stream, even at the start of a blob.
    stream = encode_opus_stream(speech_pcm, SAMPLE_RATE, container="ogg")
    starts = [i for i in range(len(stream)) if stream.startswith(b"OggS", i)]
    assert len(starts) > 3
    edges = [*starts, len(stream)]
    blobs = [stream[a:b] for a, b in itertools.pairwise(edges)]
    decoder = SessionDecoder()
    results = [decoder.decode(b) for b in blobs]
    assert not any(r.restarted for r in results)
    pcm = np.concatenate([r.pcm for r in results])
    np.testing.assert_array_equal(pcm, SessionDecoder().decode(stream).pcm)


def test_decoded_audio_matches_the_original_speech(speech_pcm: np.ndarray) -> None:
    stream = encode_opus_stream(speech_pcm, SAMPLE_RATE)
    decoded = _stream_decode(cut_blobs(stream, 1.0, seed=1))
    n = speech_pcm.size
    correlation = np.corrcoef(decoded[:n], speech_pcm)[0, 1]
    assert correlation > 0.98  # same timeline, sample for sample, no 1.41x stereo fold-up
    assert np.abs(decoded).max() <= 1.0


def test_one_byte_blobs_still_decode(speech_pcm: np.ndarray) -> None:
    stream = encode_opus_stream(speech_pcm[: SAMPLE_RATE * 2], SAMPLE_RATE)
    decoder = SessionDecoder()
    pieces = [decoder.decode(stream[:64]).pcm]  # the first blob carries the EBML magic
    pieces += [decoder.decode(stream[i : i + 1]).pcm for i in range(64, len(stream))]
    assert abs(sum(p.size for p in pieces) - 2 * SAMPLE_RATE) < 0.1 * SAMPLE_RATE


def test_a_later_blob_alone_is_refused_not_crashed(speech_pcm: np.ndarray) -> None:
    stream = encode_opus_stream(speech_pcm, SAMPLE_RATE)
    blobs = cut_blobs(stream, 1.0)
    with pytest.raises(UndecodableAudio) as info:
        SessionDecoder().decode(blobs[3])
    assert info.value.kind == "no_stream_header"


def test_gap_is_resynced_and_filled_so_later_audio_keeps_its_time(
    speech_pcm: np.ndarray,
) -> None:
    stream = encode_opus_stream(speech_pcm, SAMPLE_RATE)
    blobs = cut_blobs(stream, 1.0, seed=2)
    whole = ffmpeg_decode(stream)
    decoder = SessionDecoder()
    parts = []
    for i, blob in enumerate(blobs):
        if i == 5:
            decoder.note_gap(1)
            continue
        parts.append(decoder.decode(blob).pcm)
    streamed = np.concatenate(parts)
    # The audio after the gap lands where it belongs, within one Opus frame's worth or so.
    assert abs(streamed.size - whole.size) < 0.25 * SAMPLE_RATE
    tail = whole[-3 * SAMPLE_RATE :]
    best_lag = _best_lag(streamed[-4 * SAMPLE_RATE :], tail)
    assert abs(best_lag - (SAMPLE_RATE + (streamed.size - whole.size))) < 0.25 * SAMPLE_RATE


def _best_lag(haystack: np.ndarray, needle: np.ndarray) -> int:
    corr = np.correlate(haystack, needle[:SAMPLE_RATE], mode="valid")
    return int(np.argmax(corr))


def test_new_header_mid_session_is_a_restart_and_audio_continues() -> None:
    # Real Chrome blobs of a restart made as the extension makes it (the stop() blob dropped;
    # tests/fixtures/chrome-restart/README.md), not one signal split in two: the decoder must
    # flag the restart where the new header is and report what the session needs to fill the
    # lost span, while every sample of both streams still comes out.
    from tests.test_chrome_blobs import NEW_STREAM, RESTART_BLOBS, ffmpeg_decode

    decoder = SessionDecoder()
    results = [decoder.decode(b) for b in RESTART_BLOBS]
    assert [r.restarted for r in results] == [seq == NEW_STREAM for seq in range(len(results))]
    facts = results[NEW_STREAM].restart
    assert facts is not None and facts.carried_gap_samples == 0  # no seq was skipped
    assert abs(facts.old_blob_samples - 1.0 * SAMPLE_RATE) <= 0.1 * SAMPLE_RATE  # start(1000)
    assert facts.at_sample < 0.01 * SAMPLE_RATE  # only the old resampler's tail comes first
    old = ffmpeg_decode(b"".join(RESTART_BLOBS[:NEW_STREAM])).size
    new = ffmpeg_decode(b"".join(RESTART_BLOBS[NEW_STREAM:])).size
    total = sum(r.pcm.size for r in results)
    # The decoder cannot see the dropped blob: it adds no time of its own (the session does).
    assert abs(total - (old + new)) <= 0.1 * SAMPLE_RATE, (total, old, new)


def test_whole_wav_files_are_accepted_blob_by_blob(speech_pcm: np.ndarray) -> None:
    decoder = SessionDecoder()
    one = decoder.decode(wav_bytes(speech_pcm[:SAMPLE_RATE])).pcm
    two = decoder.decode(wav_bytes(speech_pcm[SAMPLE_RATE : 2 * SAMPLE_RATE])).pcm
    assert one.size == two.size == SAMPLE_RATE
    np.testing.assert_allclose(np.concatenate([one, two]), speech_pcm[: 2 * SAMPLE_RATE], atol=1e-4)


@pytest.mark.parametrize(("container", "codec"), [("mp3", "libmp3lame"), ("mp4", "aac")])
def test_whole_compressed_files_are_decoded_on_the_same_timeline(
    speech_pcm: np.ndarray, container: str, codec: str
) -> None:
    two_seconds = speech_pcm[8000 : 8000 + 2 * SAMPLE_RATE]
    decoded = SessionDecoder().decode(encode_file(two_seconds, SAMPLE_RATE, container, codec)).pcm
    # Lossy codecs add priming and padding: the length is right to within a frame or two.
    assert abs(decoded.size - two_seconds.size) < 0.1 * SAMPLE_RATE
    lag = int(np.argmax(np.correlate(decoded[:SAMPLE_RATE], two_seconds[:4000], "valid")))
    aligned = decoded[lag : lag + SAMPLE_RATE]
    assert np.corrcoef(aligned, two_seconds[:SAMPLE_RATE])[0, 1] > 0.95


@pytest.mark.parametrize(
    "blob",
    [b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 4, b"OggS" + b"\x00" * 200, b"RIFF garbage"],
    ids=["ebml-then-noise", "ogg-then-zeros", "riff-garbage"],
)
def test_garbage_after_a_valid_looking_header_never_raises_anything_unexpected(
    blob: bytes,
) -> None:
    decoder = SessionDecoder()
    try:
        result = decoder.decode(blob)
    except UndecodableAudio:
        return
    assert result.pcm.size == 0


def test_bit_flipped_stream_keeps_decoding(speech_pcm: np.ndarray) -> None:
    stream = bytearray(encode_opus_stream(speech_pcm, SAMPLE_RATE))
    rng = np.random.default_rng(3)
    for index in rng.integers(400, len(stream), size=40):
        stream[index] ^= 0xFF
    decoded = _stream_decode(cut_blobs(bytes(stream), 1.0))
    assert decoded.size > 0.5 * speech_pcm.size
