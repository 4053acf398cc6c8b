"""Figures from what came back: percentiles, the words of a segment with their end times, and
the plain WER that replay and soak print (the real-time corpus scores with `textnorm`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jiwer

_PUNCT = re.compile(r"[^\w\s]")


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def words_of(segment: dict[str, Any]) -> list[tuple[str, float]]:
    """(text, end_seconds) per word; a segment without word timing counts as one word."""
    words = segment.get("words")
    if isinstance(words, list) and words:
        return [(str(w.get("word", "")), float(w["end_seconds"])) for w in words]
    return [(str(segment.get("text", "")), float(segment["end_seconds"]))]


def normalise(text: str) -> str:
    """Lower case, punctuation replaced by spaces, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def transcript_wer(reference: str, transcript: str) -> float:
    """WER of a session's whole transcript (both sides normalised); 1.0 when it is empty."""
    hyp = normalise(transcript)
    return float(jiwer.wer(normalise(reference), hyp)) if hyp else 1.0
