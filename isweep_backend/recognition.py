"""One recognition pass over a session's buffer, on any recogniser: voice activity detection,
the clip Whisper hears, transcription, and the hallucination guards.

`Recognizer` is the seam between the pipeline and a model library: the scheduler and the
sessions know only it, and `engine.py` is the faster-whisper adapter behind it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from .guards import guard_words
from .timeline import SAMPLE_RATE, PassRequest, PassResult, Pcm, SpeechRegion, Word

# Audio kept before the first speech VAD finds, so Whisper hears the onset.
SPEECH_LEAD_SAMPLES = SAMPLE_RATE * 3 // 10


@dataclass
class Transcript:
    """What a recogniser wrote for a clip, on the session's timeline."""

    words: list[Word] = field(default_factory=list)
    language: str | None = None  # the clip's language, given or detected
    dropped_segments: int = 0  # segments the recogniser's own guards refused (loops)


class Recognizer(Protocol):
    """What a pass needs from a speech model. Called from executor threads, one pass at a
    time per thread; never from the event loop."""

    def detect_speech(self, audio: Pcm, offset: int) -> list[SpeechRegion]:
        """Where in `audio` (whose first sample is session sample `offset`) someone speaks."""
        ...

    def transcribe(self, clip: Pcm, offset: int, prompt: str, language: str | None) -> Transcript:
        """The words said in `clip` (first sample at session sample `offset`), with word
        times; `prompt` is text said just before it, `language` None to detect it."""
        ...


def run_pass(recognizer: Recognizer, request: PassRequest) -> PassResult:
    """Recognise the words in one session's buffered audio.

    Args:
        recognizer: the model (blocking; call this from an executor).
        request: the audio, where it sits on the session timeline, the prompt and language.

    Returns:
        The guarded words and the speech regions, both on the session timeline;
        `skipped_by_vad` when the audio holds no speech (the model is not run).
    """
    started = time.perf_counter()
    audio_end = request.offset + request.audio.size
    result = PassResult(audio_end=audio_end, language=request.language)
    result.speech = recognizer.detect_speech(request.audio, request.offset)
    if not result.speech:
        result.skipped_by_vad = True
        result.inference_seconds = time.perf_counter() - started
        return result
    clip_from = max(0, result.speech[0].start - request.offset - SPEECH_LEAD_SAMPLES)
    transcript = recognizer.transcribe(
        request.audio[clip_from:], request.offset + clip_from, request.prompt, request.language
    )
    result.language = request.language or transcript.language
    guarded = guard_words(transcript.words, result.speech)
    result.words = guarded.words
    result.dropped_words = guarded.outside_speech
    result.dropped_segments = transcript.dropped_segments + int(guarded.loop_cut)
    result.inference_seconds = time.perf_counter() - started
    return result
