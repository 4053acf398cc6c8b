"""Scoring one streamed session against the reference words: which reference word each
delivered word carries (alignment on normalised text and time), the lag of each, and what was
lost, invented or delivered twice. Pure functions; bench/realtime.py feeds them.

A "word" here is a normalised token (textnorm.tokens): "cold-hearted" is two, "10" is "ten".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import textnorm

# Two words are the same piece of speech only if their ends are this close on the session's
# timeline: streamed and offline word times differ by a few hundred ms, a repeat by more.
MATCH_TOLERANCE_SECONDS = 1.5
# The extension drops a segment that ends more than this before the last one it kept.
BACKWARDS_TOLERANCE_SECONDS = 0.25


@dataclass(frozen=True)
class Token:
    text: str
    end_seconds: float  # on the session's audio timeline
    at_seconds: float  # reference: when its audio ended; delivered: when its response arrived
    # Reference only: a word cut by a restart's dropped blob. Carrying it is not invented,
    # missing it is not lost, and it has no lag.
    optional: bool = False


@dataclass
class Score:
    reference: int  # reference tokens whose audio was sent
    delivered: int  # tokens the extension kept
    lags: list[float] = field(default_factory=list)  # per reference token carried
    lost: list[Token] = field(default_factory=list)  # reference tokens nothing carried
    substituted: int = 0  # reference tokens carried by a different word
    invented: list[Token] = field(default_factory=list)  # delivered, matching nothing
    twice: list[Token] = field(default_factory=list)  # delivered again, already carried
    dropped_by_client: int = 0  # tokens in segments the extension threw away (time went back)
    streamed_text: str = ""


def reference_tokens(words: Sequence[tuple[str, float, float, bool]]) -> list[Token]:
    """(text, session end, audio end, sent) per reference word -> tokens; a word not (wholly)
    sent is optional."""
    return [
        Token(t, end, at, optional=not sent)
        for text, end, at, sent in words
        for t in textnorm.tokens(text)
    ]


def extension_keeps(
    responses: Sequence[tuple[float, Sequence[dict[str, object]]]],
) -> tuple[list[Token], int]:
    """What the extension keeps of the responses, given in arrival order as (arrival, segments):
    segments in order, minus those whose end goes back more than 0.25 s before the last kept
    one, and minus empty text. Returns the kept tokens and how many tokens were dropped."""
    kept: list[Token] = []
    dropped = 0
    last_end: float | None = None
    for arrival, segments in responses:
        for segment in segments:
            end = float(segment["end_seconds"])  # type: ignore[arg-type]
            toks = segment_tokens(segment, arrival)
            if not toks:
                continue
            if last_end is not None and end < last_end - BACKWARDS_TOLERANCE_SECONDS:
                dropped += len(toks)
                continue
            last_end = end
            kept += toks
    return kept, dropped


def segment_tokens(segment: dict[str, object], arrival: float) -> list[Token]:
    words = segment.get("words")
    if isinstance(words, list) and words:
        return [
            Token(t, float(w["end_seconds"]), arrival)
            for w in words
            for t in textnorm.tokens(str(w.get("word", "")))
        ]
    end = float(segment["end_seconds"])  # type: ignore[arg-type]
    return [Token(t, end, arrival) for t in textnorm.tokens(str(segment.get("text", "")))]


def align(
    ref: Sequence[Token], hyp: Sequence[Token], tolerance: float = MATCH_TOLERANCE_SECONDS
) -> list[tuple[int | None, int | None]]:
    """Edit-distance alignment of two token sequences in which a pair (match or substitution)
    is allowed only when the two ends are within `tolerance` seconds; ties prefer a match.
    Returns (ref index, hyp index) pairs in order; None on one side is a deletion/insertion."""
    n, m = len(ref), len(hyp)
    inf = n + m + 1
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0] = i
    for j in range(1, m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        r = ref[i - 1]
        row, prev = cost[i], cost[i - 1]
        for j in range(1, m + 1):
            h = hyp[j - 1]
            pair = inf
            if abs(r.end_seconds - h.end_seconds) <= tolerance:
                pair = prev[j - 1] + (0 if r.text == h.text else 1)
            row[j] = min(pair, prev[j] + 1, row[j - 1] + 1)
    pairs: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and abs(ref[i - 1].end_seconds - hyp[j - 1].end_seconds) <= tolerance:
            step = 0 if ref[i - 1].text == hyp[j - 1].text else 1
            if cost[i][j] == cost[i - 1][j - 1] + step:
                pairs.append((i - 1, j - 1))
                i, j = i - 1, j - 1
                continue
        if i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            pairs.append((i - 1, None))
            i -= 1
        else:
            pairs.append((None, j - 1))
            j -= 1
    pairs.reverse()
    return pairs


def score(
    ref: Sequence[Token],
    delivered: Sequence[Token],
    dropped_by_client: int = 0,
    tolerance: float = MATCH_TOLERANCE_SECONDS,
) -> Score:
    """Lag per carried reference token (arrival - end of its audio), lost, substituted,
    invented and twice-delivered tokens. An inserted token is `twice` when a reference token
    of the same text within `tolerance` was already carried by another delivered token. One
    word spelt as two beside it ("thy self" for the reference's "thyself", or the reverse)
    is the same speech: neither lost, invented, twice nor substituted."""
    result = Score(
        reference=sum(not t.optional for t in ref),
        delivered=len(delivered),
        dropped_by_client=dropped_by_client,
    )
    result.streamed_text = " ".join(t.text for t in delivered)
    carried: set[int] = set()
    inserted: list[Token] = []
    pairs = align(ref, delivered, tolerance)
    split = split_words(pairs, ref, delivered)
    spelt_apart = set(split.values())  # pairs that carry a word with its other half beside
    for k, (i, j) in enumerate(pairs):
        if k in split:
            continue  # the other half of a word its neighbouring pair carries
        if i is not None and j is not None:
            carried.add(i)
            if ref[i].optional:
                continue
            result.lags.append(delivered[j].at_seconds - ref[i].at_seconds)
            if ref[i].text != delivered[j].text and k not in spelt_apart:
                result.substituted += 1
        elif i is not None and not ref[i].optional:
            result.lost.append(ref[i])
        elif j is not None:
            inserted.append(delivered[j])
    for token in inserted:
        again = any(
            k in carried
            and ref[k].text == token.text
            and abs(ref[k].end_seconds - token.end_seconds) <= tolerance
            for k in range(len(ref))
        )
        (result.twice if again else result.invented).append(token)
    return result


def split_words(
    pairs: Sequence[tuple[int | None, int | None]],
    ref: Sequence[Token],
    delivered: Sequence[Token],
) -> dict[int, int]:
    """Gaps in the alignment that are half of a word spelt apart on one side: the reference's
    "thyself" delivered as "thy self" aligns "self" to "thyself" and leaves "thy" inserted;
    "thy self" delivered as "thyself" leaves a reference token lost. Maps the index of each
    such gap in `pairs` to the index of the pair that carries the other half."""
    split: dict[int, int] = {}
    for k in range(len(pairs) - 1):
        for gap, pair in ((k, k + 1), (k + 1, k)):
            (gi, gj), (pi, pj) = pairs[gap], pairs[pair]
            if pi is None or pj is None or gap in split or pair in split.values():
                continue
            if gi is None and gj is not None:  # a delivered token beside a carried word
                halves, whole = [delivered[gj].text, delivered[pj].text], ref[pi].text
            elif gj is None and gi is not None:  # a reference token beside a carried word
                halves, whole = [ref[gi].text, ref[pi].text], delivered[pj].text
            else:
                continue
            if "".join(halves if gap < pair else halves[::-1]) == whole:
                split[gap] = pair
    return split
