"""What the soak prints, one function per section, in the order they print: the run, memory,
the per-minute client and server views, WER, words, requests, /metrics over the run, the
overload timeline, admission, the queue, the server's exit and log, and the summary lines.
bench/README.md explains every line.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..client import SLOW_RTT_SECONDS
from ..report import Report, clock, fmt, kinds_text, log_events, table
from ..stats import pct, transcript_wer
from .capture import CaptureAudio, Plan
from .metrics import (
    EXTENSION_SILENCE_LIMIT_SECONDS,
    SLOW_STREAK,
    WINDOW_SECONDS,
    SoakFigures,
    counter_delta,
    hist_max_bound,
    hist_mean,
    nearest,
    other_cores,
    server_cores,
)
from .runner import SAMPLE_SECONDS, Attempt, Sample, SoakResult

RSS_ROW_SECONDS = 30.0  # the memory table's rows
TIMELINE_SECONDS = 10.0  # the --overload timeline's rows
QUEUE_WAIT = "isweep_pass_queue_wait_seconds"


@dataclass
class Soak:
    """What a report section may read: the flags, the prepared audio, the run, its figures."""

    args: argparse.Namespace
    capture: CaptureAudio
    plans: list[Plan]
    prep_seconds: float
    result: SoakResult
    figures: SoakFigures

    @property
    def start(self) -> Sample:
        return self.result.samples[0]

    @property
    def end(self) -> Sample:
        return self.result.samples[-1]

    @property
    def wall(self) -> float:
        return self.end.t

    @property
    def snapshots_ok(self) -> bool:
        return bool(self.start.metrics) and bool(self.end.metrics)


def on_every(mark: float | None, seconds: float) -> bool:
    """A sample scheduled on a multiple of `seconds`, or the final one."""
    return mark is None or math.isclose(mark % seconds, 0.0, abs_tol=1e-6)


def report_run(out: Report, s: Soak) -> None:
    args, capture, result = s.args, s.capture, s.result
    out.line("mode", "overload" if args.overload else "soak")
    out.line("server", result.url + (" (started by bench)" if result.server else ""))
    if result.server is not None:
        out.line("server code", result.code_state)
    if result.ready_seconds is not None:
        out.line("server ready after s", fmt(result.ready_seconds, 1))
    out.line("sessions", str(args.sessions))
    out.line("minutes", fmt(args.minutes, 2))
    out.line(
        "capture per session",
        f"{capture.seconds:.1f} s of {args.wav.name} looped {capture.loops:.2f} times "
        f"({capture.loop_seconds:.2f} s a loop)"
        + (f"; silent from {capture.silenced_from:.1f} s" if capture.silenced_from else ""),
    )
    out.line("blobs per full capture", str(len(s.plans[0].blobs_b64)))
    out.line("session start offsets s", fmt(args.ramp_seconds, 2))
    out.line("refused sessions retry", "no" if args.no_retry else "yes, after Retry-After")
    out.line("wall seconds", fmt(s.wall, 1))
    out.line("client prep seconds (encode + local decode)", fmt(s.prep_seconds, 1))
    out.line("client cpu seconds during run", fmt(result.client_cpu, 1))
    lateness = (r.sent - r.scheduled for r in result.records)
    out.line("client send lateness max s", fmt(max(lateness, default=0.0)))
    out.line("machine load average start / end", f"{result.load_start:.2f} / {result.load_end:.2f}")
    out.line(
        f"cpu cores used of {os.cpu_count()}: server / others (mean over the run)",
        f"{fmt(server_cores(s.start, s.end), 2)} / {fmt(other_cores(s.start, s.end), 2)}",
    )


def memory_row(sample: Sample) -> list[str]:
    def metric(name: str, digits: int) -> str:
        m = sample.metrics
        return fmt(m.total(name), digits) if m.has(name) else "n/a"

    return [
        ("end " if sample.mark is None else "") + clock(sample.t),
        fmt(sample.rss_mb, 1),
        "n/a" if sample.threads is None else str(sample.threads),
        metric("process_open_fds", 0),
        metric("isweep_active_sessions", 0),
        metric("isweep_buffered_audio_seconds", 1),
    ]


def rss_slope_mb_per_minute(points: list[tuple[float, float]], wall: float) -> float | None:
    """Least-squares slope of the RSS over the second half of the run."""
    half = [(t, r) for t, r in points if t >= wall / 2]
    if len(half) < 3:
        return None
    return float(np.polyfit([t for t, _ in half], [r for _, r in half], 1)[0]) * 60


def report_memory(out: Report, s: Soak) -> None:
    samples = s.result.samples
    rss_source = (
        "/proc VmRSS" if s.result.server is not None else "/metrics process_resident_memory_bytes"
    )
    out.text(f"memory every {RSS_ROW_SECONDS:.0f} s ({rss_source}; fds and sessions: /metrics):")
    rows = [memory_row(x) for x in samples if on_every(x.mark, RSS_ROW_SECONDS)]
    out.text(*table(["t", "rss MB", "threads", "open fds", "sessions", "buffered audio s"], rows))
    rss_points = [(x.t, x.rss_mb) for x in samples if x.rss_mb is not None]
    out.line("rss max MB", fmt(max((r for _, r in rss_points), default=None), 1))
    out.line(
        "rss slope over the second half MB/min", fmt(rss_slope_mb_per_minute(rss_points, s.wall), 2)
    )
    warm = [r for t, r in rss_points if t >= WINDOW_SECONDS]
    out.line(
        "rss growth from 1:00 to end MB",
        fmt(warm[-1] - warm[0] if len(warm) >= 2 else None, 1),
    )
    eviction = s.result.eviction
    if eviction is not None:
        out.line(
            "sessions evicted after s",
            "not within the wait"
            if eviction.after_seconds is None
            else fmt(eviction.after_seconds, 1),
        )
        out.line("rss after sessions evicted MB", fmt(eviction.rss_mb, 1))
        out.line("threads after sessions evicted", str(eviction.threads))


CLIENT_HEADER = [
    *("minute", "words", "emit p50", "emit p95", "emit max", "rtt p50", "rtt p95"),
    *("requests", ">500ms", "errors", "late send"),
]


def report_client_minutes(out: Report, s: Soak) -> None:
    out.text(
        "per minute, client view (words by arrival, requests by send; latency and round trips "
        "in s; round trips of 200 answers only):"
    )
    rows = []
    for m in range(s.figures.windows):
        lat = s.figures.words_by_window[m]
        reqs = s.figures.reqs_by_window[m]
        rtts = [r.rtt for r in reqs if r.ok]
        rows.append(
            [
                str(m + 1),
                str(len(lat)),
                fmt(pct(lat, 0.5)),
                fmt(pct(lat, 0.95)),
                fmt(max(lat, default=None)),
                fmt(pct(rtts, 0.5)),
                fmt(pct(rtts, 0.95)),
                str(len(reqs)),
                str(sum(1 for x in rtts if x > SLOW_RTT_SECONDS)),
                kinds_text(Counter(r.kind() for r in reqs if not r.ok)),
                fmt(max((r.sent - r.scheduled for r in reqs), default=None), 2),
            ]
        )
    out.text(*table(CLIENT_HEADER, rows))


SERVER_HEADER = [
    *("minute", "passes/s", "qwait mean", "qwait max", "pass s", "pass audio s", "lag mean"),
    *("shed", "overwritten s", "sessions", "buffered s", "server cores", "other cores"),
]


def server_window(a: Sample, b: Sample) -> list[str]:
    """/metrics deltas between two samples, sessions and buffered audio at the second, and the
    CPU cores used in between."""
    passes = counter_delta(a.metrics, b.metrics, "isweep_passes_total")
    return [
        fmt(None if passes is None else passes / (b.t - a.t), 2),
        fmt(hist_mean(a.metrics, b.metrics, QUEUE_WAIT)),
        hist_max_bound(a.metrics, b.metrics, QUEUE_WAIT),
        fmt(hist_mean(a.metrics, b.metrics, "isweep_pass_duration_seconds")),
        fmt(hist_mean(a.metrics, b.metrics, "isweep_pass_audio_seconds"), 2),
        fmt(hist_mean(a.metrics, b.metrics, "isweep_word_emit_lag_seconds"), 2),
        fmt(counter_delta(a.metrics, b.metrics, "isweep_requests_shed_total"), 0),
        fmt(counter_delta(a.metrics, b.metrics, "isweep_overwritten_audio_seconds_total"), 2),
        fmt(b.metrics.total("isweep_active_sessions"), 0),
        fmt(b.metrics.total("isweep_buffered_audio_seconds"), 1),
        fmt(server_cores(a, b), 2),
        fmt(other_cores(a, b), 2),
    ]


def report_server_minutes(out: Report, s: Soak) -> None:
    out.text(
        "per minute, server view (/metrics deltas; sessions and buffered at minute end; "
        f"CPU cores used of {os.cpu_count()}: the server, and everything else but this client):"
    )
    samples, windows = s.result.samples, s.figures.windows
    rows = []
    for m in range(windows):
        a = s.start if m == 0 else nearest(samples, m * WINDOW_SECONDS)
        b = s.end if m == windows - 1 else nearest(samples, (m + 1) * WINDOW_SECONDS)
        if not (a.metrics and b.metrics) or b.t <= a.t:
            rows.append([str(m + 1), *["n/a"] * 12])
        else:
            rows.append([str(m + 1), *server_window(a, b)])
    out.text(*table(SERVER_HEADER, rows))


def report_wer(out: Report, s: Soak) -> None:
    """WER of each session's whole transcript against the audio it sent."""
    wers: list[float] = []
    for plan in s.plans:
        attempt = s.figures.admitted.get(plan.index)
        if attempt is None:
            out.line(f"wer session {plan.index}", "n/a (never admitted)")
            continue
        f = s.figures.of(attempt)
        reference = s.capture.reference(f.heard_seconds)
        full = attempt.sent_blobs == len(plan.blobs_b64)
        what = (
            f"full capture, {f.heard_seconds:.0f} s"
            if full
            else f"partial capture from {attempt.start:.0f} s, {f.heard_seconds:.0f} s of audio"
        )
        if not reference:
            out.line(f"wer session {plan.index}", f"n/a (no reference; {what})")
            continue
        wer = transcript_wer(reference, f.transcript)
        if full:
            wers.append(wer)
        out.line(f"wer session {plan.index}", f"{wer:.3f} ({what})")
    out.line("wer mean (full captures)", fmt(statistics.fmean(wers) if wers else None))


def report_words(out: Report, s: Soak) -> None:
    figs = s.figures.figs.values()
    all_lat = [w.latency for w in s.figures.words()]
    out.line("words emitted", str(len(all_lat)))
    out.line(
        "word-emit latency p50 / p95 / max s (whole run)",
        f"{fmt(pct(all_lat, 0.5))} / {fmt(pct(all_lat, 0.95))} / {fmt(max(all_lat, default=None))}",
    )
    out.line("words timed past the audio sent", str(sum(f.ahead_of_audio for f in figs)))
    out.line("segments going back in time", str(sum(f.backwards for f in figs)))
    admitted_figs = [s.figures.of(a) for a in s.figures.admitted.values()]
    out.line(
        "longest time without a segment s (max over sessions)",
        fmt(max((f.longest_gap for f in admitted_figs), default=None), 1),
    )
    out.line(
        "sessions the extension would stop "
        f"(no segment for {EXTENSION_SILENCE_LIMIT_SECONDS:.0f} s)",
        str(sum(1 for f in admitted_figs if f.longest_gap > EXTENSION_SILENCE_LIMIT_SECONDS)),
    )
    out.line(
        f"slow round-trip streaks ({SLOW_STREAK} in a row over {SLOW_RTT_SECONDS * 1000:.0f} ms; "
        "the extension would restart its recorder)",
        str(sum(f.slow_streaks for f in admitted_figs)),
    )


def report_requests(out: Report, s: Soak) -> None:
    records = s.result.records
    ok_rtts = [r.rtt for r in records if r.ok]
    out.line("requests", str(len(records)))
    out.line(
        "round trip p50 / p95 / max s (200 answers)",
        f"{fmt(pct(ok_rtts, 0.5))} / {fmt(pct(ok_rtts, 0.95))} / {fmt(max(ok_rtts, default=None))}",
    )
    errors = [r for r in records if not r.ok]
    out.line(
        "non-200 answers by status and code",
        kinds_text(Counter(r.kind() for r in errors if r.status)),
    )
    out.line("connection errors", str(sum(1 for r in errors if r.status is None)))


def report_run_metrics(out: Report, s: Soak) -> None:
    """/metrics deltas from the first sample to the last."""
    if not s.snapshots_ok:
        out.line("/metrics", "unavailable")
        return
    ms, me = s.start.metrics, s.end.metrics
    run_passes = counter_delta(ms, me, "isweep_passes_total")
    out.line(
        "passes per second (whole run)",
        fmt(None if run_passes is None else run_passes / s.wall, 2),
    )
    out.line("pass queue wait mean s (whole run)", fmt(hist_mean(ms, me, QUEUE_WAIT)))
    out.line(
        "server word-emit lag mean s (/metrics, whole run)",
        fmt(hist_mean(ms, me, "isweep_word_emit_lag_seconds")),
    )
    shed_end = me.by_label("isweep_requests_shed_total", "reason")
    shed_start = ms.by_label("isweep_requests_shed_total", "reason")
    shed_by_reason = {k: v - shed_start.get(k, 0.0) for k, v in shed_end.items()}
    out.line("isweep_requests_shed_total delta", fmt(sum(shed_by_reason.values()), 0))
    out.line(
        "isweep_requests_shed_total delta by reason",
        ",".join(f"{k}x{v:.0f}" for k, v in sorted(shed_by_reason.items()) if v) or "-",
    )
    out.line(
        "isweep_overwritten_audio_seconds_total delta",
        fmt(counter_delta(ms, me, "isweep_overwritten_audio_seconds_total"), 2),
    )
    for name in ("isweep_decode_errors_total", "isweep_hallucination_drops_total"):
        out.line(name + " delta", fmt(counter_delta(ms, me, name), 0))


TIMELINE_HEADER = [
    *("until", "tried", "refused", "admitted", "sessions", "emit p50", "emit max", "passes/s"),
    *("qwait mean", "qwait max", "pass audio s", "buffered s", "server cores", "other cores"),
]


def timeline_row(
    a: Sample, b: Sample, attempts: list[Attempt], latencies: list[float]
) -> list[str]:
    started = [x for x in attempts if a.t <= x.start < b.t]
    passes = counter_delta(a.metrics, b.metrics, "isweep_passes_total")
    return [
        clock(b.t),
        str(len(started)),
        str(sum(1 for x in started if x.refusal is not None and not x.admitted)),
        str(sum(1 for x in started if x.admitted)),
        fmt(b.metrics.total("isweep_active_sessions"), 0),
        fmt(pct(latencies, 0.5), 2),
        fmt(max(latencies, default=None), 2),
        fmt(None if passes is None else passes / (b.t - a.t), 2),
        fmt(hist_mean(a.metrics, b.metrics, QUEUE_WAIT), 2),
        hist_max_bound(a.metrics, b.metrics, QUEUE_WAIT),
        fmt(hist_mean(a.metrics, b.metrics, "isweep_pass_audio_seconds"), 1),
        fmt(b.metrics.total("isweep_buffered_audio_seconds"), 1),
        fmt(server_cores(a, b), 2),
        fmt(other_cores(a, b), 2),
    ]


def report_overload_timeline(out: Report, s: Soak) -> None:
    """Every TIMELINE_SECONDS: new sessions tried, refused and admitted (by the time their
    seq 0 was sent), word-emit latency (by arrival), and the server's queue from /metrics."""
    out.text(
        f"overload timeline, every {TIMELINE_SECONDS:.0f} s (sessions tried/refused/admitted "
        "by the send time of their seq 0; latency by word arrival, s; the rest /metrics):"
    )
    marks = [x for x in s.result.samples if x.metrics and on_every(x.mark, TIMELINE_SECONDS)]
    words = s.figures.words()
    rows = [
        timeline_row(a, b, s.result.attempts, [w.latency for w in words if a.t <= w.arrived < b.t])
        for a, b in itertools.pairwise(marks)
    ]
    out.text(*table(TIMELINE_HEADER, rows))


def report_admission(out: Report, s: Soak) -> None:
    attempts = s.result.attempts
    first = [a for a in attempts if a.number == 0]
    refusals = [a.refusal for a in attempts if a.refusal is not None]
    refusal_rtts = [r.rtt for r in refusals]
    mid_session = [r for a in attempts if a.admitted for r in a.records if not r.ok]
    out.line("new-session attempts", str(len(attempts)))
    out.line("sessions admitted on their first attempt", str(sum(1 for a in first if a.admitted)))
    out.line(
        "sessions admitted after a refusal",
        str(sum(1 for a in attempts if a.admitted and a.number > 0)),
    )
    out.line("sessions never admitted", str(len(s.plans) - len(s.figures.admitted)))
    out.line(
        "new sessions refused with 503 (sessions, answers)",
        f"{len({r.session for r in refusals if r.status == 503})}, "
        f"{sum(1 for r in refusals if r.status == 503)}",
    )
    out.line("refusals by status and code", kinds_text(Counter(r.kind() for r in refusals)))
    out.line(
        "refusal answer latency p50 / p95 / max s",
        f"{fmt(pct(refusal_rtts, 0.5))} / {fmt(pct(refusal_rtts, 0.95))} / "
        f"{fmt(max(refusal_rtts, default=None))}",
    )
    out.line(
        "admitted sessions answered non-200 later (the extension would fall back)",
        f"{len({r.session for r in mid_session})} sessions, {len(mid_session)} answers",
    )


def sampled_max(samples: list[Sample], name: str) -> float | None:
    return max((x.metrics.total(name) for x in samples if x.metrics), default=None)


def report_queue(out: Report, s: Soak) -> None:
    """The longest pass queue wait, and the most sessions and buffered audio sampled."""
    samples = s.result.samples
    qwait_means = [
        q
        for s0, s1 in itertools.pairwise(samples)
        if s0.metrics
        and s1.metrics
        and (q := hist_mean(s0.metrics, s1.metrics, QUEUE_WAIT)) is not None
    ]
    out.line(
        "max pass queue wait s (histogram bucket over the run)",
        hist_max_bound(s.start.metrics, s.end.metrics, QUEUE_WAIT) if s.snapshots_ok else "n/a",
    )
    out.line(
        f"max pass queue wait mean over {SAMPLE_SECONDS:.0f} s samples s",
        fmt(max(qwait_means, default=None)),
    )
    out.line(
        "max active sessions (sampled)", fmt(sampled_max(samples, "isweep_active_sessions"), 0)
    )
    out.line(
        "max buffered audio s (sampled)",
        fmt(sampled_max(samples, "isweep_buffered_audio_seconds"), 1),
    )


def report_server_log(out: Report, s: Soak) -> None:
    """The server's exit and log, the first failed requests, and the transcripts if asked."""
    result = s.result
    if result.server is not None:
        out.line(
            "server exit code",
            "killed after SIGTERM timeout" if result.exit_code is None else str(result.exit_code),
        )
        events, shown = log_events(result.server.log_path)
        out.line(
            "server log lines (warning and above) by event",
            ",".join(f"{k}x{n}" for k, n in sorted(events.items())) or "-",
        )
        out.text(*(f"  {text}" for text in shown))
    for r in [r for r in result.records if not r.ok][:5]:
        out.text(f"  failed: session {r.session} attempt {r.attempt} seq {r.seq} {r.kind()}")
    if s.args.show_transcripts:
        for session, attempt in sorted(s.figures.admitted.items()):
            out.text(f"transcript session {session}: {s.figures.of(attempt).transcript}")


def report_summary(out: Report, s: Soak) -> None:
    """The summary lines, last."""
    rss_start, rss_end = s.start.rss_mb, s.end.rss_mb
    out.line("rss start MB", fmt(rss_start, 1))
    out.line("rss end MB", fmt(rss_end, 1))
    out.line(
        "rss growth MB",
        fmt(None if rss_start is None or rss_end is None else rss_end - rss_start, 1),
    )
    by_window = s.figures.words_by_window
    first_p50, last_p50 = pct(by_window[0], 0.5), pct(by_window[-1], 0.5)
    out.line("latency p50 first minute / last minute", f"{fmt(first_p50)} s / {fmt(last_p50)} s")
    out.line("errors total", str(sum(1 for r in s.result.records if not r.ok)))


def report(s: Soak) -> Report:
    out = Report()
    report_run(out, s)
    report_memory(out, s)
    report_client_minutes(out, s)
    report_server_minutes(out, s)
    report_wer(out, s)
    report_words(out, s)
    report_requests(out, s)
    report_run_metrics(out, s)
    if s.args.overload:
        report_overload_timeline(out, s)
    report_admission(out, s)
    report_queue(out, s)
    report_server_log(out, s)
    report_summary(out, s)
    return out


def exit_status(s: Soak) -> int:
    """Soak: 1 if any request was not answered 200. Overload: 1 if anything but a 503 refusal
    of a new session went wrong."""
    errors = [r for r in s.result.records if not r.ok]
    if s.args.overload:
        refused = {
            id(a.refusal) for a in s.result.attempts if a.refusal and a.refusal.status == 503
        }
        return 0 if all(id(r) in refused for r in errors) else 1
    return 0 if not errors else 1
