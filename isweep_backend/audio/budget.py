"""What one blob may cost the shared decode threads: its audio and parse-work budgets, and the
Opus TOC arithmetic that lets the audio budget be checked before anything is decoded.

A hostile blob is cheap to make and expensive to decode (a few bytes of laced Opus or FLAC
silence stand for minutes of audio), so every stage refuses a blob past its budget instead of
doing the work: the demuxers count their steps, the decoder counts samples before decoding.
"""

from __future__ import annotations

from ..errors import UndecodableAudio

# Audio one blob may decode to. The extension's blobs hold 1 s (2 s after an adaptive
# restart); a whole file posted as one blob is the largest real case. 30 s is the default ring
# buffer (`buffer_seconds`): more than that could not be kept whole anyway.
MAX_BLOB_AUDIO_SECONDS = 30.0
# Parse steps (elements, resync candidates, pages, frames) one blob may cost a demuxer. A
# real 1 s Chrome blob takes about 40, a whole 30 s WebM file with 20 ms frames about 3,100;
# 5,000 steps cost some tens of milliseconds of one core.
MAX_PARSE_STEPS_PER_BLOB = 5_000
# Blobs over budget after which a session's later blobs are refused undecoded: a recorder
# never sends one, so a session that keeps doing so costs the decode thread no more.
MAX_OVER_BUDGET_BLOBS_PER_SESSION = 3
OPUS_RATE = 48_000
# RFC 6716 3.2.5: a packet holds at most 120 ms; libopus refuses longer ones undecoded.
_OPUS_MAX_PACKET_SAMPLES = 5_760


class ParseBudget:
    """Counts one blob's parse steps; raises `UndecodableAudio("over_budget")` past the cap."""

    def __init__(self) -> None:
        # Read when a blob starts, not when this module loads, so a benchmark can lift it.
        self.cap = MAX_PARSE_STEPS_PER_BLOB
        self.left = self.cap

    def spend(self, steps: int = 1) -> None:
        self.left -= steps
        if self.left < 0:
            raise UndecodableAudio(
                "over_budget",
                f"the blob needs more than {self.cap} parse steps "
                "(no recorder's blob needs so many); the blob is dropped",
            )


def opus_packet_samples(packet: bytes) -> int:
    """Samples at 48 kHz that an Opus packet decodes to, read from its TOC byte (RFC 6716
    3.1): frame duration from the configuration, frame count from the code. 0 if invalid."""
    if not packet:
        return 0
    toc = packet[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code < 3:
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 0
    samples = frame * count
    return samples if samples <= _OPUS_MAX_PACKET_SAMPLES else 0


def check_opus_audio_budget(packets: list[bytes]) -> None:
    """Refuse, before decoding, a blob whose Opus packets hold more than the audio budget."""
    total = sum(opus_packet_samples(p) for p in packets)
    if total > MAX_BLOB_AUDIO_SECONDS * OPUS_RATE:
        raise UndecodableAudio(
            "over_budget",
            f"the blob holds {total / OPUS_RATE:.0f} s of Opus audio, more than the "
            f"{MAX_BLOB_AUDIO_SECONDS:g} s one blob may hold",
        )
