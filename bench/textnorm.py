"""One text normaliser for every WER and word match of the real-time benchmark.

Lowercase; curly apostrophes made straight; hyphens split words; other punctuation dropped
(apostrophes inside a word kept: "world's" is not "worlds"); numbers 0-99 and "Mr."/"Mrs."
spelled out, as read aloud ("10" and "ten", "Mr." and "mister" are the same spoken word).
"""

from __future__ import annotations

import re

import jiwer

_ONES = [
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    *("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"),
    *("seventeen", "eighteen", "nineteen"),
]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SPOKEN = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}
_NOT_WORD = re.compile(r"[^\w\s']")
_EDGE_APOSTROPHES = re.compile(r"(^'+|'+$)")


def number_words(n: int) -> list[str]:
    if n < 20:
        return [_ONES[n]]
    tens, ones = divmod(n, 10)
    return [_TENS[tens]] + ([_ONES[ones]] if ones else [])


def tokens(text: str) -> list[str]:
    """The normalised words of `text` (one input word may give several: "cold-hearted")."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("-", " ")
    out: list[str] = []
    for raw in _NOT_WORD.sub(" ", text).split():
        word = _EDGE_APOSTROPHES.sub("", raw)
        if not word:
            continue
        if word.isdigit() and int(word) < 100:
            out += number_words(int(word))
        else:
            out.append(_SPOKEN.get(word, word))
    return out


def normalise(text: str) -> str:
    return " ".join(tokens(text))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after normalising both sides; an empty hypothesis is all deletions."""
    ref = normalise(reference)
    if not ref:
        raise ValueError("empty reference")
    return float(jiwer.wer(ref, normalise(hypothesis) or "<empty>"))
