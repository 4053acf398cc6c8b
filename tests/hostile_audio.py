"""Hostile blobs, crafted from real encoder output: cheap to send, expensive to decode.

Shared by tests/test_hostile_audio.py and bench/hostile_blobs.py. Every builder starts from a
real stream header (Chrome's own WebM header, a libopus Ogg stream, an FFmpeg FLAC file), so
the demuxers get past the header and spend their work where an attacker wants it.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np

from tests.audio_tools import FIXTURES, encode_opus_stream

# EBML header, Segment, Info and Tracks (A_OPUS, track 1) of a real Chrome recording.
CHROME_HEADER = (FIXTURES / "chrome" / "seq00.webm-part").read_bytes()[:146]
# A Cluster of unknown size at timecode 0, as MediaRecorder writes it.
CLUSTER_START = bytes.fromhex("1f43b67501ffffffffffffff") + bytes.fromhex("e78100")


def webm_resync_storm(size: int) -> bytes:
    """A WebM stream whose body is `size` bytes of 6-byte SimpleBlocks that look valid to the
    resync scan (track 1, plausible size, followed by another block) but fail to parse (lacing
    flags with no payload): each one sends the demuxer back to resynchronise."""
    block = b"\xa3\x84\x81\x00\x00\x06"
    return CHROME_HEADER + CLUSTER_START + block * (size // len(block))


def webm_laced_opus_bomb(size: int) -> bytes:
    """A WebM stream whose body is `size` bytes of Xiph-laced SimpleBlocks, 256 two-byte Opus
    packets each. Each packet is a valid 120 ms packet (code 3, two empty 60 ms SILK frames),
    so every 3 bytes decode to 120 ms of audio: 3 MiB is about 35 hours."""
    count = 256
    packet = b"\x1b\x02"  # config 3 (SILK NB 60 ms), code 3; 2 frames, CBR, no padding
    lacing = b"\x02" * (count - 1)
    body = b"\x81\x00\x00\x82" + bytes([count - 1]) + lacing + packet * count  # flags: Xiph
    block = b"\xa3" + _vint(len(body)) + body
    return CHROME_HEADER + CLUSTER_START + block * max(1, size // len(block))


def ogg_fake_page_storm(size: int) -> bytes:
    """A real Ogg/Opus stream start, then `size` bytes of fake pages of the same stream:
    "OggS" headers that claim 255 full segments (a 65 KB page) with a wrong CRC, one every 282
    bytes, so a demuxer that checks each candidate's CRC over its claimed page does ~230 times
    the blob's size in CRC work."""
    real = encode_opus_stream(np.zeros(16000, dtype=np.float32), 16000, container="ogg")
    start = _first_pages(real, 2)  # OpusHead and OpusTags
    serial = struct.unpack_from("<I", real, 14)[0]
    fake = (
        b"OggS\x00\x00" + struct.pack("<qIII", 0, serial, 2, 0xDEADBEEF) + b"\xff" + b"\xff" * 255
    )
    return start + fake * (size // len(fake))


def ogg_flac_stream(pages: int) -> list[bytes]:
    """A real Ogg FLAC stream (FFmpeg's encoder) cut into one blob per page: its first packet
    is not an OpusHead, so the stream can never be decoded here."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("flac", rate=16000, layout="mono")
        rng = np.random.default_rng(0)
        pcm = rng.integers(-3000, 3000, size=(1, 16000 * 20), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = 16000
        frame.pts = 0
        frame.time_base = Fraction(1, 16000)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    data = buf.getvalue()
    return [p for p in _split_pages(data)][:pages]


def flac_of_silence(seconds: float, rate: int = 8000, hide_length: bool = False) -> bytes:
    """A real FLAC file (FFmpeg's encoder) of `seconds` of silence: about 190 bytes a second
    at 8 kHz. With `hide_length`, STREAMINFO's total-samples field says "unknown", as a live
    encoder may write it, so the length shows only by decoding."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        step = rate * 60
        remaining = round(seconds * rate)
        pts = 0
        while remaining > 0:
            n = min(step, remaining)
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, n), dtype=np.int16), format="s16", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = pts
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
            pts += n
            remaining -= n
        for packet in stream.encode(None):
            out.mux(packet)
    data = bytearray(buf.getvalue())
    if hide_length:
        # STREAMINFO body starts at byte 8; total samples are its bits 108-143.
        data[21] &= 0xF0
        data[22:26] = b"\0\0\0\0"
    return bytes(data)


def _vint(value: int) -> bytes:
    if value < 0x7F:
        return bytes([0x80 | value])
    assert value < 0x3FFF
    return bytes([0x40 | value >> 8, value & 0xFF])


def _split_pages(data: bytes) -> list[bytes]:
    pages = []
    pos = 0
    while pos < len(data):
        n_segments = data[pos + 26]
        end = pos + 27 + n_segments + sum(data[pos + 27 : pos + 27 + n_segments])
        pages.append(data[pos:end])
        pos = end
    return pages


def _first_pages(data: bytes, count: int) -> bytes:
    return b"".join(_split_pages(data)[:count])
