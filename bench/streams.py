"""A WAV sent as the extension sends it (replay and soak): its reference text, the live
WebM/Opus stream cut into one session's blobs, and where each blob ends on the session's audio
timeline, decoded as the server decodes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from isweep_backend.audio.decode import SessionDecoder
from tests.audio_tools import cut_blobs

from .client import b64


def load_reference(wav: Path, ref: Path | None) -> str | None:
    """The reference text: `ref` (.txt, or .json with a `text` field), else the WAV's .json
    or .txt sidecar; None when there is none."""
    candidates = [ref] if ref is not None else [wav.with_suffix(".json"), wav.with_suffix(".txt")]
    for path in candidates:
        if path is None or not path.exists():
            continue
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return str(json.loads(raw)["text"])
        return raw.strip()
    return None


def blob_end_samples(blobs: list[bytes]) -> list[int]:
    """Where each blob ends on the session's audio timeline, decoded as the server decodes."""
    decoder = SessionDecoder()
    total = 0
    ends = []
    for blob in blobs:
        total += decoder.decode(blob).pcm.size
        ends.append(total)
    return ends


@dataclass(frozen=True)
class SessionBlobs:
    """One session's cut of a stream."""

    blobs_b64: list[str]  # as the requests carry them
    end_samples: list[int]  # cumulative 16 kHz samples decoded after each blob


def session_blobs(stream: bytes, blob_seconds: float, seed: int) -> SessionBlobs:
    """Cut `stream` at arbitrary byte offsets (`seed`: the session's cut) into ~`blob_seconds`
    blobs, as MediaRecorder's timeslices fall."""
    blobs = cut_blobs(stream, seconds=blob_seconds, seed=seed)
    return SessionBlobs([b64(b) for b in blobs], blob_end_samples(blobs))
