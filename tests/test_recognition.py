"""One pass on any recogniser: what `run_pass` adds around the model (the clip it is given,
the guards, the skip on silence), checked with a scripted recogniser whose answers are fixed,
so each case is exact. The real model runs through the same function in test_policy.py,
test_models.py and every end-to-end test."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from isweep_backend.recognition import SPEECH_LEAD_SAMPLES, Transcript, run_pass
from isweep_backend.timeline import SAMPLE_RATE, PassRequest, Pcm, SpeechRegion, Word

S = SAMPLE_RATE
OFFSET = 50 * S  # the buffer starts 50 s into the session


@dataclass
class ScriptedRecognizer:
    """A stand-in for the model that hears what it is told to (not a model)."""

    speech: list[SpeechRegion]
    words: list[Word]
    clips: list[tuple[int, int]] = field(default_factory=list)  # (offset, samples) given

    def detect_speech(self, audio: Pcm, offset: int) -> list[SpeechRegion]:
        return self.speech

    def transcribe(self, clip: Pcm, offset: int, prompt: str, language: str | None) -> Transcript:
        self.clips.append((offset, clip.size))
        return Transcript(list(self.words), language or "en")


def word(text: str, start_s: float, end_s: float) -> Word:
    return Word(f" {text}", OFFSET + round(start_s * S), OFFSET + round(end_s * S), 0.9)


def request(seconds: float = 6.0) -> PassRequest:
    return PassRequest(np.zeros(round(seconds * S), np.float32), OFFSET, "", None)


def test_silence_skips_the_model() -> None:
    recognizer = ScriptedRecognizer(speech=[], words=[word("hello", 1.0, 1.5)])
    result = run_pass(recognizer, request())
    assert result.skipped_by_vad and not result.words and recognizer.clips == []
    assert result.audio_end == OFFSET + 6 * S


def test_the_model_hears_from_just_before_the_first_speech() -> None:
    speech = [SpeechRegion(OFFSET + 2 * S, OFFSET + 4 * S)]
    recognizer = ScriptedRecognizer(speech, [word("hello", 2.1, 2.6)])
    result = run_pass(recognizer, request())
    clip_offset = OFFSET + 2 * S - SPEECH_LEAD_SAMPLES
    assert recognizer.clips == [(clip_offset, OFFSET + 6 * S - clip_offset)]
    assert [w.key for w in result.words] == ["hello"] and result.language == "en"


def test_words_outside_speech_are_dropped_and_counted() -> None:
    speech = [SpeechRegion(OFFSET + 1 * S, OFFSET + 3 * S)]
    words = [word("real", 1.2, 1.6), word("thanks", 4.5, 5.0)]
    result = run_pass(ScriptedRecognizer(speech, words), request())
    assert [w.key for w in result.words] == ["real"]
    assert result.dropped_words == 1 and result.dropped_segments == 0


def test_a_repetition_loop_is_cut_and_counted_as_a_dropped_segment() -> None:
    speech = [SpeechRegion(OFFSET, OFFSET + 6 * S)]
    words = [word("go", 0.5, 0.8)] + [word("no", 1 + i / 2, 1.3 + i / 2) for i in range(6)]
    result = run_pass(ScriptedRecognizer(speech, words), request())
    assert [w.key for w in result.words] == ["go", "no"]
    assert result.dropped_segments == 1 and result.dropped_words == 0
