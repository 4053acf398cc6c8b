"""Decode bombs and parse storms (tests/hostile_audio.py) are refused within their budgets,
and the containers and codecs the README lists for whole files are the only ones opened."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
import structlog

from isweep_backend.audio.budget import MAX_BLOB_AUDIO_SECONDS, opus_packet_samples
from isweep_backend.audio.decode import SessionDecoder, decode_whole_file
from isweep_backend.audio.ogg import OggOpusDemuxer
from isweep_backend.errors import MAX_UNTRUSTED_CHARS, UndecodableAudio
from isweep_backend.logging import configure_logging
from isweep_backend.timeline import SAMPLE_RATE
from tests.audio_tools import cut_blobs, encode_file, encode_opus_stream, wav_bytes
from tests.conftest import load_synthetic
from tests.hostile_audio import (
    CHROME_HEADER,
    flac_of_silence,
    ogg_fake_page_storm,
    ogg_flac_stream,
    webm_laced_opus_bomb,
    webm_resync_storm,
)


def _refusal(blob: bytes, decoder: SessionDecoder | None = None) -> str:
    """The UndecodableAudio kind the blob is refused with (fails if it decodes)."""
    decoder = decoder or SessionDecoder()
    with pytest.raises(UndecodableAudio) as info:
        result = decoder.decode(blob)
        pytest.fail(f"decoded {result.pcm.size / SAMPLE_RATE:.1f} s instead of refusing")
    return info.value.kind


# --- whole files --------------------------------------------------------------------------


def test_flac_that_declares_hours_of_silence_is_refused_from_its_header() -> None:
    bomb = flac_of_silence(600)  # ~110 KB that decode to 10 minutes (38 MB of float32)
    assert len(bomb) < 200_000
    assert _refusal(bomb) == "over_budget"


def test_flac_that_hides_its_length_stops_decoding_at_the_budget() -> None:
    bomb = flac_of_silence(600, hide_length=True)
    assert _refusal(bomb) == "over_budget"
    # Just under the budget is still a file like any other.
    fine = flac_of_silence(MAX_BLOB_AUDIO_SECONDS - 1, hide_length=True)
    assert decode_whole_file(fine).size == (MAX_BLOB_AUDIO_SECONDS - 1) * SAMPLE_RATE


@pytest.mark.parametrize(
    ("container", "codec"), [("flac", "flac"), ("aiff", "pcm_s16be"), ("wav", "pcm_s24le")]
)
def test_listed_containers_and_codecs_decode(container: str, codec: str) -> None:
    speech = load_synthetic("pauses").pcm[: 2 * SAMPLE_RATE]
    decoded = SessionDecoder().decode(encode_file(speech, SAMPLE_RATE, container, codec)).pcm
    np.testing.assert_allclose(decoded, speech, atol=1e-3)


@pytest.mark.parametrize(
    ("container", "codec", "kind"),
    [
        ("avi", "pcm_s16le", "unsupported_container"),  # RIFF, but not WAVE
        ("wav", "adpcm_ima_wav", "unsupported_codec"),
        ("wav", "pcm_s16le@4000", "implausible_format"),
        ("adts", "aac", "unsupported_container"),  # MPEG frame sync, but not MPEG audio
    ],
)
def test_other_containers_codecs_and_rates_are_refused_before_decoding(
    container: str, codec: str, kind: str
) -> None:
    codec, _, rate = codec.partition("@")
    speech = load_synthetic("pauses").pcm[: SAMPLE_RATE // 2]
    blob = (
        wav_bytes(speech, int(rate)) if rate else encode_file(speech, SAMPLE_RATE, container, codec)
    )
    assert _refusal(blob) == kind


# --- streams ------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["webm", "ogg"])
def test_a_whole_recording_just_under_the_audio_budget_is_decoded_in_one_blob(
    container: str,
) -> None:
    # The most a real blob can be: a whole recording with 20 ms frames (Firefox's), in one blob.
    seconds = MAX_BLOB_AUDIO_SECONDS - 1
    speech = load_synthetic("long").pcm[: round(seconds * SAMPLE_RATE)]
    stream = encode_opus_stream(speech, SAMPLE_RATE, container=container, frame_ms=20)
    decoded = SessionDecoder().decode(stream).pcm
    assert abs(decoded.size - speech.size) < 0.1 * SAMPLE_RATE


def test_laced_tiny_opus_packets_are_refused_before_decoding() -> None:
    bomb = webm_laced_opus_bomb(6_000)  # 6 KB of 2-byte packets: about 4 minutes of audio
    packets = 256 * (len(bomb) // 1000)
    assert packets * opus_packet_samples(b"\x1b\x02") > 4 * MAX_BLOB_AUDIO_SECONDS * 48_000
    assert _refusal(bomb) == "over_budget"


def test_a_blob_that_keeps_the_demuxer_resyncing_is_dropped_past_its_parse_budget() -> None:
    speech = load_synthetic("pauses").pcm
    blobs = cut_blobs(encode_opus_stream(speech, SAMPLE_RATE), 1.0)
    decoder = SessionDecoder()
    before = [decoder.decode(b).pcm for b in blobs[:3]]
    # 40 KB of blocks that each fail to parse: ~7,000 resyncs in one blob.
    storm = webm_resync_storm(40_000)[len(CHROME_HEADER) :]
    assert _refusal(storm, decoder) == "over_budget"
    # The session's own stream goes on from its next Cluster.
    after = [decoder.decode(b).pcm for b in blobs[3:]]
    assert sum(p.size for p in before) > 2 * SAMPLE_RATE
    assert sum(p.size for p in after) > (speech.size - 6 * SAMPLE_RATE)


def test_a_session_that_keeps_sending_blobs_over_budget_is_no_longer_decoded() -> None:
    decoder = SessionDecoder()
    bomb = webm_laced_opus_bomb(6_000)
    kinds = [_refusal(bomb, decoder)]
    kinds += [_refusal(bomb[len(CHROME_HEADER) :], decoder) for _ in range(2)]
    assert kinds == ["over_budget"] * 3
    # From now on nothing of this session is decoded, not even a valid stream.
    speech = load_synthetic("pauses").pcm[: 2 * SAMPLE_RATE]
    with pytest.raises(UndecodableAudio, match="not decoded") as info:
        decoder.decode(encode_opus_stream(speech, SAMPLE_RATE))
    assert info.value.kind == "over_budget"


def test_fake_ogg_pages_cost_their_parse_budget_not_their_claimed_crc_bytes() -> None:
    # 3 MiB of candidate pages claiming 65 KB each: ~700 MB of checksums if each is checked.
    assert _refusal(ogg_fake_page_storm(3 << 20)) == "over_budget"


def test_an_ogg_stream_that_is_not_opus_is_dropped_and_holds_no_bytes() -> None:
    pages = ogg_flac_stream(12)
    assert len(pages) == 12 and sum(map(len, pages)) > 8_000
    demuxer = OggOpusDemuxer()
    for page in pages:
        with pytest.raises(UndecodableAudio, match="OpusHead"):
            demuxer.feed(page)
        # Each page is consumed and dropped: nothing accumulates blob after blob.
        assert demuxer.held_bytes < 64
    # Through the session decoder, every blob gets the same clear answer.
    decoder = SessionDecoder()
    assert {_refusal(page, decoder) for page in pages} == {"corrupt_stream"}


def test_a_megabyte_codec_id_is_cut_in_the_error_and_the_log_line() -> None:
    codec_id = b"A_" + b"X" * ((1 << 20) - 2)  # as large as a held leaf may be
    entry = b"\xd7\x81\x01" + b"\x83\x81\x02" + b"\x86" + _size4(len(codec_id)) + codec_id
    track_entry = b"\xae" + _size4(len(entry)) + entry
    tracks = bytes.fromhex("1654ae6b") + _size4(len(track_entry)) + track_entry
    segment_at = CHROME_HEADER.index(bytes.fromhex("18538067"))
    blob = (
        CHROME_HEADER[:segment_at]
        + bytes.fromhex("1853806701ffffffffffffff")
        + tracks
        + bytes.fromhex("1f43b67501ffffffffffffff")
        + b"\xe7\x81\x00"
    )
    with pytest.raises(UndecodableAudio) as info:
        SessionDecoder().decode(blob)
    assert info.value.kind == "unsupported_codec"
    message = str(info.value)
    assert len(message) < 4 * MAX_UNTRUSTED_CHARS and "more characters" in message

    # Whatever else carries a long string into a log line is cut there too.
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        structlog.get_logger("isweep_backend.test").warning(
            "chunk_undecodable", reason="A_" + "X." * (1 << 19)
        )
    finally:
        configure_logging("warning", "json")
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["event"] == "chunk_undecodable"
    assert line["reason"].startswith("A_X.X.") and len(line["reason"]) < 2_000


def _size4(value: int) -> bytes:
    return bytes([0x10]) + value.to_bytes(3, "big")  # a 4-byte EBML size


def test_opus_toc_durations_match_what_libopus_decodes() -> None:
    stream = encode_opus_stream(load_synthetic("pauses").pcm[:SAMPLE_RATE], SAMPLE_RATE)
    with av.open(io.BytesIO(stream)) as container:
        packets = [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]
    codec = av.CodecContext.create("libopus", "r")
    codec.sample_rate = 48_000
    codec.layout = "stereo"
    for packet in [*packets, b"\x1b\x02", b"\x18"]:
        frames = codec.decode(av.Packet(packet))
        assert sum(f.samples for f in frames) == opus_packet_samples(packet)
