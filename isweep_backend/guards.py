"""Hallucination guards on a pass's words: what Whisper wrote that nobody said.

Whisper invents text over silence and noise, and a decoder stuck in a loop repeats itself.
These checks need only the words and where voice activity detection heard speech, so they
apply to any recogniser.
"""

from __future__ import annotations

from dataclasses import dataclass

from .timeline import SAMPLE_RATE, SpeechRegion, Word

# A word that does not come this close to any VAD speech region is taken as invented (or as
# the start of speech that VAD has not confirmed yet: the next pass will have it).
SPEECH_REGION_PAD_SAMPLES = SAMPLE_RATE // 10
MAX_LOOP_NGRAM = 8


@dataclass(frozen=True)
class GuardedWords:
    words: list[Word]
    outside_speech: int  # words dropped for lying wholly outside speech
    loop_cut: bool  # whether a repetition loop was cut off


def guard_words(words: list[Word], speech: list[SpeechRegion]) -> GuardedWords:
    """The words of a pass that survive every guard, and what the guards dropped."""
    fitted = fit_words_to_speech(words, speech)
    kept = cut_repetition_loop(fitted)
    return GuardedWords(kept, len(words) - len(fitted), len(kept) < len(fitted))


def fit_words_to_speech(words: list[Word], speech: list[SpeechRegion]) -> list[Word]:
    """Drop words that lie wholly outside speech, and pull word edges that Whisper stretched
    into the surrounding silence back to the speech region: exact edges mean less muting."""
    fitted: list[Word] = []
    pad = SPEECH_REGION_PAD_SAMPLES
    for word in words:
        overlapping = [r for r in speech if word.start < r.end + pad and word.end > r.start - pad]
        if not overlapping:
            continue
        start = max(word.start, overlapping[0].start)
        end = min(word.end, overlapping[-1].end)
        if end <= start:
            start, end = word.start, word.end
        fitted.append(Word(word.text, start, end, word.probability))
    return fitted


def loop_repeats(n: int) -> int:
    """Repeats of an n-gram that make a loop: "no, no, no" is speech, four times is not."""
    return 4 if n == 1 else 3


def cut_repetition_loop(words: list[Word]) -> list[Word]:
    """Cut a hypothesis where an n-gram starts repeating itself in a row, keeping its first
    occurrence: Whisper's typical failure on noise and music."""
    keys = [w.key for w in words]
    for start in range(len(keys)):
        for n in range(1, MAX_LOOP_NGRAM + 1):
            repeats = loop_repeats(n)
            end = start + n * repeats
            if end > len(keys):
                break
            gram = keys[start : start + n]
            if all(keys[start + k * n : start + (k + 1) * n] == gram for k in range(1, repeats)):
                return words[: start + n]
    return words
