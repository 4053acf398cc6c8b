"""The faster-whisper adapter: one model, loaded once, behind `recognition.Recognizer`
(voice activity detection, transcription with word timestamps). Runs in executor threads;
nothing here touches the event loop.

faster-whisper (and CTranslate2 under it) is imported inside the functions that need it, not
at the top: the import takes 0.2 to 0.3 s and loads native libraries, which the CLI's
`--help`, the settings checks and every module that only needs the value types should not
pay; the service imports it once, while the model loads in the background.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .models import ResolvedModel, resolve_model
from .recognition import Transcript
from .settings import Settings, parallelism
from .timeline import SAMPLE_RATE, Pcm, SpeechRegion, Word, to_seconds

FRAMES_PER_SECOND = 100  # Whisper's log-mel hop is 10 ms
FULL_WINDOW_FRAMES = 30 * FRAMES_PER_SECOND
# The default beam on a GPU: there a pass of tiny.en takes 0.06 s greedy and 0.11 s with this
# beam, well inside the answer's wait, and greedy float16 lost more words (bench/README.md).
GPU_BEAM_SIZE = 5
# Decoding budget: generous for speech (~4 tokens a second), but it stops a looping decoder.
TOKENS_PER_SECOND_BUDGET = 8
MIN_TOKEN_BUDGET = 24
MAX_TOKEN_BUDGET = 220
# Audio after a window's last word shorter than this gets no window of its own (see transcribe).
TAIL_WINDOW_SKIP_SECONDS = 1.0


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
    """One loaded model shared by every session. Its methods are called from executor threads."""

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

    def transcribe(self, clip: Pcm, offset: int, prompt: str, language: str | None) -> Transcript:
        s = self._settings
        segments, info = self._model.transcribe(
            clip,
            language=language,
            beam_size=self.info.beam_size,
            temperature=0.0,
            word_timestamps=True,
            condition_on_previous_text=False,
            initial_prompt=prompt or None,
            vad_filter=False,
            no_speech_threshold=s.no_speech_threshold,
            log_prob_threshold=s.log_prob_threshold,
            compression_ratio_threshold=s.compression_ratio_threshold,
            max_new_tokens=token_budget(clip.size),
        )
        transcript = Transcript()
        clip_seconds = to_seconds(clip.size)
        for segment in segments:
            if segment.compression_ratio > s.compression_ratio_threshold:
                # Text that compresses this well repeats itself: a looping decoder.
                transcript.dropped_segments += 1
                continue
            for w in segment.words or []:
                if not any(ch.isalnum() for ch in w.word):
                    continue  # a lone "." or "-": nothing the client could mute or read
                transcript.words.append(
                    Word(
                        text=w.word,
                        start=offset + round(w.start * SAMPLE_RATE),
                        end=offset + round(w.end * SAMPLE_RATE),
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
        transcript.language = language or info.language
        return transcript


def _path(raw: str) -> Any:
    from pathlib import Path

    return Path(raw).expanduser()


def token_budget(samples: int) -> int:
    seconds = to_seconds(samples)
    return max(MIN_TOKEN_BUDGET, min(MAX_TOKEN_BUDGET, round(TOKENS_PER_SECOND_BUDGET * seconds)))
