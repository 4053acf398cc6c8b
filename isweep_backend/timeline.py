"""The session's sample clock and the value types every stage shares: PCM, words, and what a
recognition pass is given and gives back.

Time on the audio timeline is a count of samples at `SAMPLE_RATE` since the session began;
seconds appear only at the edges (the wire format, logs, metrics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000  # Whisper's input rate: every stage after the decoder works at it

Pcm = npt.NDArray[np.float32]


def to_samples(seconds: float) -> int:
    """`seconds` on the timeline, in whole samples."""
    return round(seconds * SAMPLE_RATE)


def to_seconds(samples: int) -> float:
    """`samples` on the timeline, in seconds."""
    return samples / SAMPLE_RATE


@dataclass(frozen=True)
class Word:
    """One recognised word on the session's timeline, in samples since the session began."""

    text: str  # as Whisper spells it, usually with a leading space
    start: int
    end: int
    probability: float

    @property
    def key(self) -> str:
        """The word without case, spacing or punctuation, for comparing hypotheses."""
        return re.sub(r"[^\w']+", "", self.text.lower())


@dataclass(frozen=True)
class SpeechRegion:
    """A stretch of the timeline that voice activity detection heard as speech."""

    start: int
    end: int


@dataclass(frozen=True)
class PassRequest:
    """What one recognition pass hears: a session's buffered audio and its context."""

    audio: Pcm
    offset: int  # session sample index of audio[0]
    prompt: str
    language: str | None


@dataclass
class PassResult:
    """What one recognition pass heard, on the session's timeline."""

    words: list[Word] = field(default_factory=list)
    speech: list[SpeechRegion] = field(default_factory=list)
    audio_end: int = 0  # session sample index one past the audio this pass saw
    language: str | None = None
    skipped_by_vad: bool = False
    dropped_segments: int = 0  # hallucination guards: compression, loops
    dropped_words: int = 0  # words outside any speech region
    inference_seconds: float = 0.0

    @property
    def speech_end(self) -> int | None:
        return self.speech[-1].end if self.speech else None
