"""The recognition engine: one faster-whisper model, loaded once, and the work of one pass
(VAD, transcription with word timestamps, hallucination guards). Runs in an executor thread;
nothing here touches the event loop.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .models import ResolvedModel, resolve_model
from .ringbuffer import Pcm
from .settings import Settings, parallelism

SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 100  # Whisper's log-mel hop is 10 ms
FULL_WINDOW_FRAMES = 30 * FRAMES_PER_SECOND
# The default beam on a GPU: there a pass of tiny.en takes 0.06 s greedy and 0.11 s with this
# beam, well inside the answer's wait, and greedy float16 lost more words (bench/README.md).
GPU_BEAM_SIZE = 5
# Audio kept before the first speech VAD finds, so Whisper hears the onset.
SPEECH_LEAD_SAMPLES = SAMPLE_RATE * 3 // 10
# A word that does not come this close to any VAD speech region is taken as invented (or as
# the start of speech that VAD has not confirmed yet: the next pass will have it).
SPEECH_REGION_PAD_SAMPLES = SAMPLE_RATE // 10
MAX_LOOP_NGRAM = 8
# Decoding budget: generous for speech (~4 tokens a second), but it stops a looping decoder.
TOKENS_PER_SECOND_BUDGET = 8
MIN_TOKEN_BUDGET = 24
MAX_TOKEN_BUDGET = 220
# Audio after a window's last word shorter than this gets no window of its own (see run_pass).
TAIL_WINDOW_SKIP_SECONDS = 1.0


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
    start: int
    end: int


@dataclass(frozen=True)
class PassRequest:
    audio: Pcm
    offset: int  # session sample index of audio[0]
    prompt: str
    language: str | None


@dataclass
class PassResult:
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


@dataclass(frozen=True)
class EngineInfo:
    name: str
    source: str
    device: str
    compute_type: str
    beam_size: int
    english_only: bool
    load_seconds: float


def windowed_model_class() -> Any:
    """faster-whisper's model with a shorter encoder window.

    Whisper's encoder always sees 30 s of features, the audio padded with zeros, and that
    fixed cost dominates a streaming pass over a few seconds of audio. CTranslate2 accepts
    fewer frames, so padding beyond `encoder_window_frames` is cut (never real audio). A
    20 s window gave the same WER as 30 s on our fixtures at 1.6x the speed (bench/).
    """
    from faster_whisper import WhisperModel

    class WindowedWhisperModel(WhisperModel):  # type: ignore[misc]
        encoder_window_frames = FULL_WINDOW_FRAMES

        def encode(self, features: Any) -> Any:
            frames = features.shape[-1]
            if self.encoder_window_frames < frames:
                # faster-whisper pads features with exact zeros; real log-mel frames never are.
                flat = features.reshape(-1, features.shape[-2], frames)
                used = np.flatnonzero(np.any(flat != 0, axis=(0, 1)))
                content = int(used[-1]) + 1 if used.size else 0
                features = features[..., : max(self.encoder_window_frames, content)]
            return super().encode(features)

    return WindowedWhisperModel


def choose_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def choose_beam_size(requested: int, device: str) -> int:
    if requested:
        return requested
    return GPU_BEAM_SIZE if device == "cuda" else 1


def choose_compute_type(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    return "float16" if device == "cuda" else "int8"


class Engine:
    """One loaded model shared by every session. `run_pass` is called from executor threads."""

    def __init__(self, settings: Settings, model: Any, info: EngineInfo) -> None:
        self._settings = settings
        self._model = model
        self.info = info
        from faster_whisper.vad import VadOptions

        self._vad_options = VadOptions(
            threshold=settings.vad_threshold,
            min_speech_duration_ms=200,
            min_silence_duration_ms=300,
            speech_pad_ms=100,
        )

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        """Resolve and load the model (blocking: call it from an executor)."""
        started = time.perf_counter()
        cache = settings.model_cache_dir or None
        resolved: ResolvedModel = resolve_model(
            settings.model, None if cache is None else _path(cache)
        )
        device = choose_device(settings.device)
        compute_type = choose_compute_type(settings.compute_type, device)
        workers, threads = parallelism(settings)
        model_class = windowed_model_class()
        model = model_class(
            resolved.location,
            device=device,
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=workers,
        )
        model.encoder_window_frames = round(settings.encoder_window_seconds * FRAMES_PER_SECOND)
        english_only = not model.model.is_multilingual
        engine = cls(
            settings,
            model,
            EngineInfo(
                name=resolved.name,
                source=resolved.source,
                device=device,
                compute_type=compute_type,
                beam_size=choose_beam_size(settings.beam_size, device),
                english_only=english_only,
                load_seconds=0.0,
            ),
        )
        engine.warm_up()
        engine.info = EngineInfo(
            **{**engine.info.__dict__, "load_seconds": time.perf_counter() - started}
        )
        return engine

    def session_language(self) -> str | None:
        """The language every pass of a new session uses, or None to detect it once."""
        if self.info.english_only:
            return "en"
        lang = self._settings.language
        return None if lang == "auto" else lang

    def warm_up(self) -> None:
        # The first CTranslate2 call allocates its buffers; pay that before reporting ready.
        rng = np.random.default_rng(0)
        noise = (0.01 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
        segments, _ = self._model.transcribe(
            noise, language=self.session_language() or "en", beam_size=1, vad_filter=False
        )
        list(segments)

    def detect_speech(self, audio: Pcm, offset: int) -> list[SpeechRegion]:
        from faster_whisper.vad import get_speech_timestamps

        spans = get_speech_timestamps(audio, self._vad_options)
        return [SpeechRegion(offset + s["start"], offset + s["end"]) for s in spans]

    def run_pass(self, request: PassRequest) -> PassResult:
        started = time.perf_counter()
        audio_end = request.offset + request.audio.size
        result = PassResult(audio_end=audio_end, language=request.language)
        result.speech = self.detect_speech(request.audio, request.offset)
        if not result.speech:
            result.skipped_by_vad = True
            result.inference_seconds = time.perf_counter() - started
            return result
        clip_from = max(0, result.speech[0].start - request.offset - SPEECH_LEAD_SAMPLES)
        clip = request.audio[clip_from:]
        clip_offset = request.offset + clip_from
        s = self._settings
        segments, info = self._model.transcribe(
            clip,
            language=request.language,
            beam_size=self.info.beam_size,
            temperature=0.0,
            word_timestamps=True,
            condition_on_previous_text=False,
            initial_prompt=request.prompt or None,
            vad_filter=False,
            no_speech_threshold=s.no_speech_threshold,
            log_prob_threshold=s.log_prob_threshold,
            compression_ratio_threshold=s.compression_ratio_threshold,
            max_new_tokens=token_budget(clip.size),
        )
        words: list[Word] = []
        clip_seconds = clip.size / SAMPLE_RATE
        for segment in segments:
            if segment.compression_ratio > s.compression_ratio_threshold:
                result.dropped_segments += 1
                continue
            for w in segment.words or []:
                if not any(ch.isalnum() for ch in w.word):
                    continue  # a lone "." or "-": nothing the client could mute or read
                words.append(
                    Word(
                        text=w.word,
                        start=clip_offset + round(w.start * SAMPLE_RATE),
                        end=clip_offset + round(w.end * SAMPLE_RATE),
                        probability=float(w.probability),
                    )
                )
            # When a window's text stops inside speech, faster-whisper encodes a new window
            # from the last word's end, even for the 0.1 to 0.5 s the buffer holds after it:
            # a second encoder and decoder run that made a pass over 6 to 9 s of audio half
            # as long again (0.26 s mean instead of 0.15 on the corpus), so its words missed
            # the answer's wait more often. That tail is a word still being said; the next
            # pass hears it with a second of audio after it, so it waits for that pass.
            last = segment.words[-1].end if segment.words else segment.end
            if clip_seconds - last < TAIL_WINDOW_SKIP_SECONDS:
                break
        result.language = request.language or info.language
        kept = fit_words_to_speech(words, result.speech)
        result.dropped_words = len(words) - len(kept)
        looped = cut_repetition_loop(kept)
        if len(looped) < len(kept):
            result.dropped_segments += 1
        result.words = looped
        result.inference_seconds = time.perf_counter() - started
        return result


def _path(raw: str) -> Any:
    from pathlib import Path

    return Path(raw).expanduser()


def token_budget(samples: int) -> int:
    seconds = samples / SAMPLE_RATE
    return max(MIN_TOKEN_BUDGET, min(MAX_TOKEN_BUDGET, round(TOKENS_PER_SECOND_BUDGET * seconds)))


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
