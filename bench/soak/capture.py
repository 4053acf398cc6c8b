"""The capture every session sends: the WAV looped to the run's length as one live WebM/Opus
stream, silent from a sentence the end would cut, with the reference text it holds; and each
session's plan (its cut of the stream, when it starts, when it stops sending).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.audio_tools import encode_opus_stream, read_wav

from ..streams import load_reference, session_blobs

# The last sentence of a capture ends at least this long before the capture does (the rest is
# silence), so the end-of-speech flush can commit it before the capture ends.
FLUSH_MARGIN_SECONDS = 1.5


@dataclass
class CaptureAudio:
    stream: bytes  # one live WebM/Opus stream, `seconds` long
    seconds: float
    loop_seconds: float
    loops: float
    # (end on the capture's timeline, text) of every reference unit (sentence, or whole loop)
    # that lies wholly inside the capture; None without a reference text.
    units: list[tuple[float, str]] | None
    silenced_from: float | None  # the tail from here on was replaced with silence

    def reference(self, heard_seconds: float) -> str | None:
        """The text of the units that end early enough in `heard_seconds` of audio."""
        if self.units is None:
            return None
        return " ".join(t for end, t in self.units if end <= heard_seconds - FLUSH_MARGIN_SECONDS)


def reference_units(
    wav: Path, ref: Path | None, loop_seconds: float
) -> list[tuple[float, float, str]]:
    """(start, end, text) within one loop: the sidecar's sentences, else the whole loop."""
    if ref is None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            raw = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
            units = [
                (float(s["start_s"]), float(s["end_s"]), str(s["text"])) for s in raw["sentences"]
            ]
            if units:
                return units
    text = load_reference(wav, ref)
    return [] if text is None else [(0.0, loop_seconds, text)]


def build_capture(wav: Path, ref: Path | None, minutes: float) -> CaptureAudio:
    one, rate = read_wav(wav)
    total = round(minutes * 60 * rate)
    loops_needed = -(-total // one.size)
    pcm = np.tile(one, loops_needed)[:total].copy()
    loop_seconds = one.size / rate
    capture_seconds = total / rate
    per_loop = reference_units(wav, ref, loop_seconds)
    kept: list[tuple[float, str]] = []
    silenced_from: float | None = None
    for k in range(loops_needed):
        for start, end, text in per_loop:
            start_at, end_at = k * loop_seconds + start, k * loop_seconds + end
            if end_at <= capture_seconds - FLUSH_MARGIN_SECONDS:
                kept.append((end_at, text))
            elif start_at < capture_seconds and silenced_from is None:
                # A unit the capture would cut (or end too close to its end): silence from
                # here on, so the reference is exact and the capture still lasts M minutes.
                silenced_from = start_at
    if silenced_from is not None:
        pcm[round(silenced_from * rate) :] = 0.0
    return CaptureAudio(
        stream=encode_opus_stream(pcm, rate),
        seconds=capture_seconds,
        loop_seconds=loop_seconds,
        loops=capture_seconds / loop_seconds,
        units=kept if per_loop else None,
        silenced_from=silenced_from,
    )


@dataclass
class Plan:
    index: int
    user_id: str
    tab_id: int
    blobs_b64: list[str]
    blob_end_samples: list[int]  # cumulative 16 kHz samples decoded after each blob
    first_start: float  # run time (seconds since the run's t0) of the first seq 0
    deadline: float  # run time after which no blob of this session is sent


def make_plans(args: argparse.Namespace, capture: CaptureAudio, prefix: str) -> list[Plan]:
    plans = []
    run_seconds = args.minutes * 60
    for i in range(args.sessions):
        cut = session_blobs(capture.stream, args.blob_seconds, seed=i)
        start = i * args.ramp_seconds
        plans.append(
            Plan(
                index=i,
                user_id=f"{prefix}{i}",
                tab_id=i,
                blobs_b64=cut.blobs_b64,
                blob_end_samples=cut.end_samples,
                first_start=start,
                # Soak: every session sends its whole capture. Overload: the run lasts M minutes
                # and sessions that start later send less.
                deadline=run_seconds if args.overload else start + run_seconds,
            )
        )
    return plans
