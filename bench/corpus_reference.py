"""Add the reference words and offline WERs to each recording's index in bench/corpus/.

    python -m bench.corpus_reference --sources SRC [--only NAME ...]

For each recording: tiny.en (int8, greedy, word timestamps) transcribes the source WAV; each
word's time is carried onto the session's audio timeline (the sent blobs decoded with the
server's own SessionDecoder) by cross-correlating the two, one offset per WebM stream; words
whose audio sat in the blob dropped at a restart are marked `sent: false`. The offline WER of
the same model is taken on the source audio and on the audio as sent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from isweep_backend.audio.decode import SessionDecoder
from isweep_backend.models import resolve_model
from isweep_backend.timeline import SAMPLE_RATE

from . import corpus, textnorm

MODEL = "tiny.en"
CUT_WORD_SECONDS = 0.1
MIN_ALIKE = 0.9
FRAME = SAMPLE_RATE // 100  # 10 ms
LOUD_FRACTION = 0.015  # of the clip's loudest frame's RMS: -36 dB keeps soft consonants
EDGE_MARGIN_SECONDS = 0.06  # Opus at 128 kbit/s keeps speech's waveform: a true match scores ~0.99


def load_model(name: str) -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(
        resolve_model(name).location, device="cpu", compute_type="int8", cpu_threads=2
    )


def transcribe(model: Any, pcm: np.ndarray, words: bool) -> tuple[str, list[Any]]:
    """Offline, as the tests' offline pass: greedy, no VAD, no conditioning on earlier text."""
    segments, _ = model.transcribe(
        pcm,
        language="en",
        beam_size=1,
        vad_filter=False,
        condition_on_previous_text=False,
        word_timestamps=words,
    )
    segments = list(segments)
    text = " ".join(s.text.strip() for s in segments)
    return text, [w for s in segments for w in (s.words or [])]


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: float
    end: float
    probability: float


def loud_frames(pcm: np.ndarray) -> np.ndarray:
    """Per 10 ms frame: louder than LOUD_FRACTION of the clip's loudest frame."""
    n = pcm.size // FRAME
    rms = np.sqrt((pcm[: n * FRAME].astype(np.float64).reshape(n, FRAME) ** 2).mean(axis=1))
    return np.asarray(rms > rms.max() * LOUD_FRACTION)


def fit_to_speech(loud: np.ndarray, start: float, end: float) -> tuple[float, float]:
    """Whisper stretches a word next to a pause into the pause (by up to ~1.5 s): pull its
    ends in to the first and last loud frame inside it, with a margin for soft edges."""
    a, b = int(start * 100), int(np.ceil(end * 100))
    inside = np.flatnonzero(loud[a:b])
    if inside.size == 0:
        return start, end  # no loud frame at all: leave Whisper's guess
    new_start = max(start, (a + inside[0]) / 100 - EDGE_MARGIN_SECONDS)
    new_end = min(end, (a + inside[-1] + 1) / 100 + EDGE_MARGIN_SECONDS)
    return new_start, max(new_end, new_start + 0.01)


def clip_words(model: Any, source: np.ndarray, clips: list[dict[str, Any]]) -> list[TimedWord]:
    """Each clip transcribed on its own (short, all speech: Whisper times words better than
    across long silences), its words fitted to the speech and placed on the recording."""
    out = []
    for clip in clips:
        lo, hi = round(clip["start_s"] * SAMPLE_RATE), round(clip["end_s"] * SAMPLE_RATE)
        pcm = source[lo:hi]
        loud = loud_frames(pcm)
        for w in transcribe(model, pcm, words=True)[1]:
            start, end = fit_to_speech(loud, w.start, w.end)
            out.append(
                TimedWord(w.word, start + clip["start_s"], end + clip["start_s"], w.probability)
            )
    return out


def read_source(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (raw.astype(np.float32) / 32768.0).astype(np.float32)


def session_audio(recording: corpus.Recording) -> tuple[np.ndarray, list[int]]:
    """The sent blobs decoded as the server decodes them, and where each stream starts."""
    decoder = SessionDecoder()
    parts, starts, total, stream = [], [0], 0, 0
    for blob in recording.sent:
        if blob.stream != stream:
            starts.append(total)
            stream = blob.stream
        pcm = decoder.decode(blob.data).pcm
        parts.append(pcm)
        total += pcm.size
    return np.concatenate(parts).astype(np.float32), starts


def locate(
    session: np.ndarray, source: np.ndarray, src_s: float, guess_s: float
) -> tuple[float, float]:
    """Session time of the second of `source` that starts at `src_s`, searched within 1.5 s of
    `guess_s`, and how alike the two are there (normalised correlation, 1 = identical)."""
    start = round(src_s * SAMPLE_RATE)
    ref = source[start : start + SAMPLE_RATE]
    lo = max(0, round((guess_s - 1.5) * SAMPLE_RATE))
    window = session[lo : lo + ref.size + 3 * SAMPLE_RATE]
    n = 1 << int(np.ceil(np.log2(window.size + ref.size)))
    corr = np.fft.irfft(np.fft.rfft(window, n) * np.conj(np.fft.rfft(ref, n)), n)
    best = int(np.argmax(corr[: window.size - ref.size + 1]))
    found = window[best : best + ref.size]
    alike = float(corr[best] / (np.linalg.norm(ref) * np.linalg.norm(found) + 1e-9))
    return (lo + best) / SAMPLE_RATE, alike


def stream_offsets(
    session: np.ndarray, starts: list[int], source: np.ndarray, meta: dict[str, Any]
) -> list[dict[str, float]]:
    """Per stream: session time minus source time, from probes in speech (median, spread)."""
    probes = sorted(
        c["start_s"] + 0.3 + k
        for c in meta["clips"]
        for k in range(0, 60, 2)
        if c["start_s"] + 0.3 + k <= c["end_s"] - 1.0
    )
    out: list[dict[str, float]] = []
    ends = [*starts[1:], session.size]
    previous = 0.0
    for k, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        # A later stream lost up to ~1.1 s (the dropped blob and the recorder's stop).
        guess = previous - (0.6 if k else 0.0)
        mine = [
            p
            for p in probes
            if lo / SAMPLE_RATE + 0.3 < p + guess and p + guess + 1.3 < hi / SAMPLE_RATE
        ]
        located = [(p, *locate(session, source, p, p + guess)) for p in mine]
        # A probe whose best match is a poor one (a quiet second) says nothing about the offset.
        found = [at - p for p, at, alike in located if alike >= MIN_ALIKE]
        if not found:
            raise RuntimeError(f"{meta['name']}: no speech to locate stream {k}")
        offset = statistics.median(found)
        out.append(
            {
                "stream": k,
                "offset_seconds": round(offset, 4),
                "probes": len(found),
                "probes_too_unlike": len(located) - len(found),
                "spread_seconds": round(max(found) - min(found), 4),
                "session_start_seconds": lo / SAMPLE_RATE,
                "session_end_seconds": hi / SAMPLE_RATE,
            }
        )
        previous = offset
    return out


def place_word(word: Any, offsets: list[dict[str, float]], started_at: float) -> dict[str, Any]:
    """The word on the session timeline (and whether it was sent) and on the wall clock."""
    where = None
    for k, o in enumerate(offsets):
        start, end = word.start + o["offset_seconds"], word.end + o["offset_seconds"]
        # Whisper may start a first word in the silence before it: only a word cut by a
        # restart's lost audio (one starting well before its stream) counts as not sent.
        starts_in = k == 0 or start >= o["session_start_seconds"] - CUT_WORD_SECONDS
        if starts_in and o["session_start_seconds"] < end <= o["session_end_seconds"]:
            where = (max(start, o["session_start_seconds"]), end)
    first = offsets[0]["offset_seconds"]
    return {
        "word": word.word.strip(),
        "tokens": textnorm.tokens(word.word),
        "source_start_seconds": round(word.start, 3),
        "source_end_seconds": round(word.end, 3),
        "session_start_seconds": round(where[0], 3) if where else None,
        "session_end_seconds": round(where[1], 3) if where else round(word.end + first, 3),
        # Stream 0's clock is the recorder's; the source plays on in real time across a restart.
        "audio_end_seconds": round(word.end + first + started_at, 3),
        "sent": where is not None,
        "probability": round(word.probability, 3),
    }


def add_reference(name: str, sources: Path, model: Any) -> None:
    recording = corpus.load(name)
    index = recording.index
    meta = json.loads((sources / f"{name}.json").read_text())
    source = read_source(sources / f"{name}.wav")
    session, starts = session_audio(recording)
    offsets = stream_offsets(session, starts, source, meta)
    text, _ = transcribe(model, source, words=False)
    words = clip_words(model, source, meta["clips"])
    sent_text, _ = transcribe(model, session, words=False)
    placed = [place_word(w, offsets, index["recorder_started_at_seconds"]) for w in words]
    index["reference"] = {
        "model": f"{MODEL} int8, greedy, word_timestamps, no VAD, condition_on_previous_text "
        "off; words from each clip on its own, ends fitted to the clip's loud frames",
        "text": " ".join(w.word.strip() for w in words),
        "stream_offsets": offsets,
        "session_seconds": session.size / SAMPLE_RATE,
        "offline": {
            "source_text": text,
            "source_wer": round(textnorm.wer(index["text"], text), 4),
            "sent_text": sent_text,
            "sent_wer": round(textnorm.wer(index["text"], sent_text), 4),
        },
        "words": placed,
    }
    (corpus.CORPUS / f"{name}.json").write_text(json.dumps(index, indent=1) + "\n")
    unsent = sum(not w["sent"] for w in placed)
    print(
        f"{name}: {len(placed)} words ({unsent} not sent), offsets "
        f"{[(o['offset_seconds'], o['spread_seconds']) for o in offsets]}, offline WER "
        f"{index['reference']['offline']['source_wer']:.3f} source / "
        f"{index['reference']['offline']['sent_wer']:.3f} sent"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.corpus_reference", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sources", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    model = load_model(MODEL)
    for name in args.only or corpus.names():
        add_reference(name, args.sources, model)


if __name__ == "__main__":
    main()
