"""The soak's figures: per attempt (word-emit latency, transcript, gaps, slow streaks), per
minute window, and between two samples of the server (/metrics deltas, CPU cores used).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from isweep_backend.timeline import SAMPLE_RATE

from ..client import SLOW_RTT_SECONDS
from ..probes import Snapshot
from ..stats import words_of
from .capture import Plan
from .runner import Attempt, Record, Sample, SoakResult

WINDOW_SECONDS = 60.0  # the per-minute tables
SLOW_STREAK = 3  # three slow round trips in a row make the extension restart its recorder
EXTENSION_SILENCE_LIMIT_SECONDS = 30.0  # no segment for this long and the extension stops


# --- per attempt -----------------------------------------------------------------------------


@dataclass
class WordEvent:
    arrived: float  # run time
    latency: float


@dataclass
class AttemptFigures:
    words: list[WordEvent] = field(default_factory=list)
    transcript: str = ""
    ahead_of_audio: int = 0  # words ending in a blob not yet sent when they arrived
    backwards: int = 0  # segments ending before an earlier one (the extension drops them)
    longest_gap: float = 0.0  # longest time without a segment while the capture ran
    slow_streaks: int = 0  # runs of SLOW_STREAK round trips over 500 ms
    heard_seconds: float = 0.0  # audio of the blobs sent


def first_sends(attempt: Attempt) -> dict[int, float]:
    """When each seq was first sent (run time)."""
    first_send: dict[int, float] = {}
    for r in sorted(attempt.records, key=lambda r: r.sent):
        if not r.duplicate:
            first_send.setdefault(r.seq, r.sent)
    return first_send


def add_words(figs: AttemptFigures, attempt: Attempt, ends: list[int]) -> list[float]:
    """Words, latencies and the transcript from the answers in arrival order; returns the
    arrival times of the answers that carried segments."""
    first_send = first_sends(attempt)
    answered = sorted((r for r in attempt.records if r.segments()), key=lambda r: r.received)
    texts: list[str] = []
    last_end = -1.0
    arrivals = []
    for record in answered:
        arrivals.append(record.received)
        for segment in record.segments():
            texts.append(str(segment.get("text", "")))
            if float(segment["end_seconds"]) < last_end:
                figs.backwards += 1
            last_end = max(last_end, float(segment["end_seconds"]))
            for _, end_seconds in words_of(segment):
                blob = bisect.bisect_left(ends, round(end_seconds * SAMPLE_RATE))
                sent = first_send.get(min(blob, len(ends) - 1))
                if sent is None:
                    continue
                latency = record.received - sent
                if blob >= len(ends) or latency < 0:
                    figs.ahead_of_audio += 1
                figs.words.append(WordEvent(record.received, latency))
    figs.transcript = " ".join(texts)
    return arrivals


def slow_streaks(attempt: Attempt) -> int:
    """Runs of SLOW_STREAK round trips over the slow threshold, in seq order."""
    count = streak = 0
    for r in sorted((r for r in attempt.records if not r.duplicate), key=lambda r: r.seq):
        if r.rtt > SLOW_RTT_SECONDS:
            streak += 1
            if streak == SLOW_STREAK:
                count += 1
                streak = 0
        else:
            streak = 0
    return count


def attempt_figures(plan: Plan, attempt: Attempt) -> AttemptFigures:
    figs = AttemptFigures()
    if not attempt.sent_blobs:
        return figs
    figs.heard_seconds = plan.blob_end_samples[attempt.sent_blobs - 1] / SAMPLE_RATE
    arrivals = [
        attempt.start,
        *add_words(figs, attempt, plan.blob_end_samples[: attempt.sent_blobs]),
    ]
    last_blob_sent = max(first_sends(attempt).values(), default=attempt.start)
    arrivals.append(max(last_blob_sent, arrivals[-1]))
    figs.longest_gap = max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0)
    figs.slow_streaks = slow_streaks(attempt)
    return figs


# --- the whole run ---------------------------------------------------------------------------


def window_of(t: float, windows: int) -> int:
    return min(max(0, int(t // WINDOW_SECONDS)), windows - 1)


@dataclass
class SoakFigures:
    """The run's figures, per attempt and per minute window."""

    figs: dict[tuple[int, int], AttemptFigures]  # by (session, attempt number)
    admitted: dict[int, Attempt]  # by session: the attempt the server took
    windows: int
    words_by_window: list[list[float]]  # word-emit latencies, by arrival
    reqs_by_window: list[list[Record]]  # requests, by send time

    def of(self, attempt: Attempt) -> AttemptFigures:
        return self.figs[(attempt.session, attempt.number)]

    def words(self) -> list[WordEvent]:
        return [w for f in self.figs.values() for w in f.words]


def soak_figures(plans: list[Plan], result: SoakResult, minutes: float) -> SoakFigures:
    plan_of = {p.index: p for p in plans}
    figs = {(a.session, a.number): attempt_figures(plan_of[a.session], a) for a in result.attempts}
    windows = max(1, math.ceil(minutes - 1e-9))
    words_by_window: list[list[float]] = [[] for _ in range(windows)]
    for f in figs.values():
        for w in f.words:
            words_by_window[window_of(w.arrived, windows)].append(w.latency)
    reqs_by_window: list[list[Record]] = [[] for _ in range(windows)]
    for r in result.records:
        reqs_by_window[window_of(r.sent, windows)].append(r)
    return SoakFigures(
        figs=figs,
        admitted={a.session: a for a in result.attempts if a.admitted},
        windows=windows,
        words_by_window=words_by_window,
        reqs_by_window=reqs_by_window,
    )


# --- between two samples of the server -------------------------------------------------------


def nearest(samples: list[Sample], t: float) -> Sample:
    return min(samples, key=lambda s: abs(s.t - t))


def hist_mean(a: Snapshot, b: Snapshot, name: str) -> float | None:
    count = b.total(name + "_count") - a.total(name + "_count")
    if not b.has(name + "_count") or count <= 0:
        return None
    return (b.total(name + "_sum") - a.total(name + "_sum")) / count


def hist_max_bound(a: Snapshot, b: Snapshot, name: str) -> str:
    """The bucket holding the largest observation between two scrapes: '<=X', '>X' or '-'."""
    end, start = b.buckets(name), dict(a.buckets(name))
    count = b.total(name + "_count") - a.total(name + "_count")
    if not end or count <= 0:
        return "-"
    finite = [le for le, _ in end if math.isfinite(le)]
    for le, cumulative in end:
        if cumulative - start.get(le, 0.0) >= count:
            return f"<={le:g}" if math.isfinite(le) else f">{finite[-1]:g}"
    return "?"


def counter_delta(a: Snapshot, b: Snapshot, name: str) -> float | None:
    return b.total(name) - a.total(name) if b.has(name) else None


def cores(a: Sample, b: Sample, get: Callable[[Sample], float | None]) -> float | None:
    """CPU cores used on average between two samples."""
    x, y = get(a), get(b)
    return None if x is None or y is None or b.t <= a.t else (y - x) / (b.t - a.t)


def server_cores(a: Sample, b: Sample) -> float | None:
    return cores(a, b, lambda s: s.server_cpu)


def other_cores(a: Sample, b: Sample) -> float | None:
    """Cores used by everything on the machine but the server and this client."""
    busy = cores(a, b, lambda s: s.machine_busy)
    server = server_cores(a, b)
    client = cores(a, b, lambda s: s.client_cpu)
    if busy is None or server is None or client is None:
        return None
    return max(0.0, busy - server - client)
