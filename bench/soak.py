"""Soak and overload benchmark: N sessions stream for M minutes as the extension does.

Every session is one continuous capture: the WAV looped seamlessly for M minutes, encoded once
as a single live WebM/Opus stream (as Chrome's MediaRecorder does), cut at arbitrary byte offsets
into ~1 s blobs (a different cut per session), one POST per blob at real-time pace, without
waiting for earlier answers. While it runs, it samples the server's RSS and /metrics every 5 s;
at the end it prints per-minute tables (word-emit latency, round trips, errors, passes, queue
wait, shed requests, overwritten audio), WER per session, and the summary lines.

    python -m bench.soak --start-server --sessions 4 --minutes 10
    python -m bench.soak --start-server --overload --sessions 10 --minutes 2
    python -m bench.soak --url http://127.0.0.1:8001 --sessions 2 --minutes 1

`--overload` starts the sessions one by one (`--ramp-seconds` apart) beyond what the service
can serve and reports how it degrades: refused new sessions, the latency of those refusals,
and the pass queue wait. See bench/README.md for every line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jiwer
import numpy as np

from isweep_backend.decode import SAMPLE_RATE
from tests.audio_tools import cut_blobs, encode_opus_stream, read_wav

from . import REPO
from .client import MIME_TYPE as MIME
from .client import SLOW_RTT_SECONDS, sleep_until
from .probes import Snapshot, proc_cpu_seconds, proc_status_kb, scrape_snapshot
from .report import fmt
from .service import Service
from .stats import normalise, pct, words_of
from .streams import blob_end_samples, load_reference

SAMPLE_SECONDS = 5.0  # /metrics and RSS are sampled this often
RSS_ROW_SECONDS = 30.0  # ... and printed this often
WINDOW_SECONDS = 60.0  # the per-minute tables
TIMELINE_SECONDS = 10.0  # the --overload timeline
# The last sentence of a capture ends at least this long before the capture does (the rest is
# silence), so the end-of-speech flush can commit it before the capture ends.
FLUSH_MARGIN_SECONDS = 1.5
DEFAULT_RETRY_AFTER_SECONDS = 2.0
MIN_RETRY_CAPTURE_SECONDS = 10.0  # a refused session tries again only if this much run is left
SLOW_STREAK = 3  # three slow round trips in a row make the extension restart its recorder
EXTENSION_SILENCE_LIMIT_SECONDS = 30.0  # no segment for this long and the extension stops
EVICTION_SLACK_SECONDS = 20.0


# --- the capture every session sends ---------------------------------------------------------


@dataclass
class CaptureAudio:
    stream: bytes  # one live WebM/Opus stream, `seconds` long
    seconds: float
    loop_seconds: float
    loops: float
    # (end on the capture's timeline, text) of every reference unit (sentence, or whole loop)
    # that lies wholly inside the capture; None without a reference text.
    units: list[tuple[float, str]] | None
    silenced_from: float | None  # the tail from here on was replaced with silence

    def reference(self, heard_seconds: float) -> str | None:
        """The text of the units that end early enough in `heard_seconds` of audio."""
        if self.units is None:
            return None
        return " ".join(t for end, t in self.units if end <= heard_seconds - FLUSH_MARGIN_SECONDS)


def reference_units(
    wav: Path, ref: Path | None, loop_seconds: float
) -> list[tuple[float, float, str]]:
    """(start, end, text) within one loop: the sidecar's sentences, else the whole loop."""
    if ref is None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            raw = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
            units = [
                (float(s["start_s"]), float(s["end_s"]), str(s["text"])) for s in raw["sentences"]
            ]
            if units:
                return units
    text = load_reference(wav, ref)
    return [] if text is None else [(0.0, loop_seconds, text)]


def build_capture(wav: Path, ref: Path | None, minutes: float) -> CaptureAudio:
    one, rate = read_wav(wav)
    total = round(minutes * 60 * rate)
    loops_needed = -(-total // one.size)
    pcm = np.tile(one, loops_needed)[:total].copy()
    loop_seconds = one.size / rate
    capture_seconds = total / rate
    per_loop = reference_units(wav, ref, loop_seconds)
    kept: list[tuple[float, str]] = []
    silenced_from: float | None = None
    for k in range(loops_needed):
        for start, end, text in per_loop:
            start_at, end_at = k * loop_seconds + start, k * loop_seconds + end
            if end_at <= capture_seconds - FLUSH_MARGIN_SECONDS:
                kept.append((end_at, text))
            elif start_at < capture_seconds and silenced_from is None:
                # A unit the capture would cut (or end too close to its end): silence from
                # here on, so the reference is exact and the capture still lasts M minutes.
                silenced_from = start_at
    if silenced_from is not None:
        pcm[round(silenced_from * rate) :] = 0.0
    return CaptureAudio(
        stream=encode_opus_stream(pcm, rate),
        seconds=capture_seconds,
        loop_seconds=loop_seconds,
        loops=capture_seconds / loop_seconds,
        units=kept if per_loop else None,
        silenced_from=silenced_from,
    )


@dataclass
class Plan:
    index: int
    user_id: str
    tab_id: int
    blobs_b64: list[str]
    blob_end_samples: list[int]  # cumulative 16 kHz samples decoded after each blob
    first_start: float  # run time (seconds since the run's t0) of the first seq 0
    deadline: float  # run time after which no blob of this session is sent


def make_plans(args: argparse.Namespace, capture: CaptureAudio, prefix: str) -> list[Plan]:
    plans = []
    run_seconds = args.minutes * 60
    for i in range(args.sessions):
        blobs = cut_blobs(capture.stream, seconds=args.blob_seconds, seed=i)
        start = i * args.ramp_seconds
        plans.append(
            Plan(
                index=i,
                user_id=f"{prefix}{i}",
                tab_id=i,
                blobs_b64=[base64.b64encode(b).decode("ascii") for b in blobs],
                blob_end_samples=blob_end_samples(blobs),
                first_start=start,
                # Soak: every session sends its whole capture. Overload: the run lasts M minutes
                # and sessions that start later send less.
                deadline=run_seconds if args.overload else start + run_seconds,
            )
        )
    return plans


# --- sending ---------------------------------------------------------------------------------


@dataclass
class Record:
    session: int
    attempt: int
    seq: int
    duplicate: bool
    scheduled: float  # run time the extension would have sent it
    sent: float  # run time
    received: float | None = None
    status: int | None = None  # None: no HTTP answer (connection error, timeout)
    code: str | None = None  # the error body's code
    error: str | None = None  # the exception, without an HTTP answer
    retry_after: float | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rtt(self) -> float | None:
        return None if self.received is None else self.received - self.sent

    @property
    def ok(self) -> bool:
        return self.status == 200

    def kind(self) -> str:
        """'503 overloaded', '429 rate_limited', 'conn ClientOSError', ..."""
        if self.status is None:
            return f"conn {self.error}"
        return f"{self.status} {self.code or ''}".rstrip()


@dataclass
class Attempt:
    """One capture of a session: seq 0 onwards. A refused session may try again later."""

    session: int
    number: int
    start: float  # run time of its seq 0
    blobs: int  # blobs it may send before the session's deadline
    sent_blobs: int = 0
    admitted: bool = False  # some request was answered 200: the server holds the session
    refusal: Record | None = None  # the first non-200 answer before it was admitted
    records: list[Record] = field(default_factory=list)


@dataclass
class Run:
    http: aiohttp.ClientSession
    url: str
    t0: float  # loop time of run time 0
    blob_seconds: float
    retry: bool
    attempts: list[Attempt] = field(default_factory=list)

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0


async def post(
    run: Run, plan: Plan, attempt: Attempt, seq: int, duplicate: bool, scheduled: float
) -> None:
    body = {
        "user_id": plan.user_id,
        "tab_id": plan.tab_id,
        "seq": seq,
        "chunk_start_seconds": round(seq * run.blob_seconds, 3),
        "mime_type": MIME,
        "audio_b64": plan.blobs_b64[seq],
    }
    record = Record(plan.index, attempt.number, seq, duplicate, scheduled, run.now())
    attempt.records.append(record)
    try:
        async with run.http.post(run.url + "/asr/stream", json=body) as resp:
            record.status = resp.status
            raw = await resp.read()
            record.received = run.now()
            retry_after = resp.headers.get("Retry-After")
        if record.status == 200:
            record.segments = list(json.loads(raw).get("segments", []))
        else:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                record.code = str(json.loads(raw)["error"]["code"])
            with contextlib.suppress(ValueError, TypeError):
                record.retry_after = float(retry_after) if retry_after is not None else None
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        record.received = run.now()
        record.error = type(exc).__name__
    if record.ok:
        attempt.admitted = True
    elif not attempt.admitted and attempt.refusal is None:
        attempt.refusal = record


async def run_attempt(run: Run, plan: Plan, attempt: Attempt) -> None:
    """Send the blobs at real-time pace, each without waiting for earlier answers; stop once
    the session was refused (the extension gives up on any non-2xx)."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    for seq in range(attempt.blobs):
        at = attempt.start + seq * run.blob_seconds
        await sleep_until(loop, run.t0 + at)
        if attempt.refusal is not None:
            break
        tasks.append(asyncio.create_task(post(run, plan, attempt, seq, False, at)))
        attempt.sent_blobs += 1
    await asyncio.gather(*tasks)


def blobs_before(plan: Plan, start: float, blob_seconds: float) -> int:
    fits = math.floor((plan.deadline - start) / blob_seconds + 1e-9) + 1
    return max(1, min(len(plan.blobs_b64), fits))


async def run_session(run: Run, plan: Plan) -> None:
    start, number = plan.first_start, 0
    while True:
        attempt = Attempt(plan.index, number, start, blobs_before(plan, start, run.blob_seconds))
        run.attempts.append(attempt)
        await run_attempt(run, plan, attempt)
        refusal = attempt.refusal
        if attempt.admitted or refusal is None or not run.retry:
            return
        wait = DEFAULT_RETRY_AFTER_SECONDS if refusal.retry_after is None else refusal.retry_after
        start = max(run.now(), (refusal.received or refusal.sent) + wait)
        if plan.deadline - start < MIN_RETRY_CAPTURE_SECONDS:
            return
        number += 1


# --- sampling the server ---------------------------------------------------------------------


@dataclass
class Sample:
    mark: float | None  # the run time it was scheduled for; None for the final one
    t: float  # run time it was taken
    metrics: Snapshot
    rss_mb: float | None
    threads: int | None
    server_cpu: float | None  # CPU seconds of the server so far
    client_cpu: float  # CPU seconds of this process so far
    machine_busy: float | None  # busy CPU seconds of the whole machine so far (/proc/stat)


def machine_busy_seconds() -> float | None:
    """Busy CPU time of every core of the machine: /proc/stat's first line minus idle and
    iowait (guest time is already counted in user)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    total = sum(fields[:8])
    return (total - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cores(a: Sample, b: Sample, get: Callable[[Sample], float | None]) -> float | None:
    """CPU cores used on average between two samples."""
    x, y = get(a), get(b)
    return None if x is None or y is None or b.t <= a.t else (y - x) / (b.t - a.t)


def other_cores(a: Sample, b: Sample) -> float | None:
    """Cores used by everything on the machine but the server and this client."""
    busy = cores(a, b, lambda s: s.machine_busy)
    server = cores(a, b, lambda s: s.server_cpu)
    client = cores(a, b, lambda s: s.client_cpu)
    if busy is None or server is None or client is None:
        return None
    return max(0.0, busy - server - client)


async def take_sample(
    run: Run, server: Service | None, mark: float | None, t_run: float | None = None
) -> Sample:
    t = run.now() if t_run is None else t_run
    metrics = await scrape_snapshot(run.http, run.url)
    rss_mb: float | None = None
    threads: int | None = None
    server_cpu: float | None = None
    if server is not None:
        rss_mb = proc_status_kb(server.proc.pid, "VmRSS") / 1024
        threads = proc_status_kb(server.proc.pid, "Threads")
        server_cpu = proc_cpu_seconds(server.proc.pid)
    else:
        if metrics.has("process_resident_memory_bytes"):
            rss_mb = metrics.total("process_resident_memory_bytes") / 2**20
        if metrics.has("process_cpu_seconds_total"):
            server_cpu = metrics.total("process_cpu_seconds_total")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Sample(
        mark,
        t,
        metrics,
        rss_mb,
        threads,
        server_cpu,
        usage.ru_utime + usage.ru_stime,
        machine_busy_seconds(),
    )


async def sampler(
    run: Run, server: Service | None, stop: asyncio.Event, samples: list[Sample]
) -> None:
    loop = asyncio.get_running_loop()
    k = 1
    while True:
        mark = k * SAMPLE_SECONDS
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, run.t0 + mark - loop.time()))
        if stop.is_set():
            samples.append(await take_sample(run, server, None))
            return
        samples.append(await take_sample(run, server, mark))
        k += 1


async def wait_evicted(run: Run, timeout: float) -> float | None:
    """Wait until the server holds no session; the seconds it took, None on timeout."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < timeout:
        snap = await scrape_snapshot(run.http, run.url)
        if snap.has("isweep_active_sessions") and snap.total("isweep_active_sessions") == 0:
            return loop.time() - started
        await asyncio.sleep(2.0)
    return None


# --- figures ---------------------------------------------------------------------------------


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


def attempt_figures(plan: Plan, attempt: Attempt, blob_seconds: float) -> AttemptFigures:
    figs = AttemptFigures()
    if not attempt.sent_blobs:
        return figs
    figs.heard_seconds = plan.blob_end_samples[attempt.sent_blobs - 1] / SAMPLE_RATE
    first_send: dict[int, float] = {}
    for r in sorted(attempt.records, key=lambda r: r.sent):
        if not r.duplicate:
            first_send.setdefault(r.seq, r.sent)
    ends = plan.blob_end_samples[: attempt.sent_blobs]
    answered = sorted(
        (r for r in attempt.records if r.segments and r.received is not None),
        key=lambda r: r.received or 0.0,
    )
    texts: list[str] = []
    last_end = -1.0
    arrivals = [attempt.start]
    for record in answered:
        assert record.received is not None
        arrivals.append(record.received)
        for segment in record.segments:
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
    last_blob_sent = max(first_send.values(), default=attempt.start)
    arrivals.append(max(last_blob_sent, arrivals[-1]))
    figs.longest_gap = max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0)
    streak = 0
    for r in sorted((r for r in attempt.records if not r.duplicate), key=lambda r: r.seq):
        if r.rtt is not None and r.rtt > SLOW_RTT_SECONDS:
            streak += 1
            if streak == SLOW_STREAK:
                figs.slow_streaks += 1
                streak = 0
        else:
            streak = 0
    return figs


def window_of(t: float, windows: int) -> int:
    return min(max(0, int(t // WINDOW_SECONDS)), windows - 1)


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


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    return [
        "  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def overload_timeline(
    samples: list[Sample], attempts: list[Attempt], words: list[WordEvent]
) -> list[str]:
    """Every TIMELINE_SECONDS: new sessions tried, refused and admitted (by the time their
    seq 0 was sent), word-emit latency (by arrival), and the server's queue from /metrics."""
    marks = [
        s
        for s in samples
        if s.metrics
        and (s.mark is None or math.isclose(s.mark % TIMELINE_SECONDS, 0.0, abs_tol=1e-6))
    ]
    rows = []
    for a, b in itertools.pairwise(marks):
        started = [x for x in attempts if a.t <= x.start < b.t]
        lat = [w.latency for w in words if a.t <= w.arrived < b.t]
        passes = counter_delta(a.metrics, b.metrics, "isweep_passes_total")
        rows.append(
            [
                clock(b.t),
                str(len(started)),
                str(sum(1 for x in started if x.refusal is not None and not x.admitted)),
                str(sum(1 for x in started if x.admitted)),
                fmt(b.metrics.total("isweep_active_sessions"), 0),
                fmt(pct(lat, 0.5), 2),
                fmt(max(lat, default=None), 2),
                fmt(None if passes is None else passes / (b.t - a.t), 2),
                fmt(hist_mean(a.metrics, b.metrics, "isweep_pass_queue_wait_seconds"), 2),
                hist_max_bound(a.metrics, b.metrics, "isweep_pass_queue_wait_seconds"),
                fmt(hist_mean(a.metrics, b.metrics, "isweep_pass_audio_seconds"), 1),
                fmt(b.metrics.total("isweep_buffered_audio_seconds"), 1),
                fmt(cores(a, b, lambda s: s.server_cpu), 2),
                fmt(other_cores(a, b), 2),
            ]
        )
    header = [
        "until",
        "tried",
        "refused",
        "admitted",
        "sessions",
        "emit p50",
        "emit max",
        "passes/s",
        "qwait mean",
        "qwait max",
        "pass audio s",
        "buffered s",
        "server cores",
        "other cores",
    ]
    return table(header, rows)


def clock(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    s = round(abs(seconds))
    return f"{sign}{s // 60}:{s % 60:02d}"


def kinds_text(counter: Counter[str]) -> str:
    return ",".join(f"{k.replace(' ', ':')}x{n}" for k, n in sorted(counter.items())) or "-"


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "isweep_backend"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "n/a"
    return head + (f" + uncommitted changes in {len(dirty)} file(s)" if dirty else "")


def log_events(path: Path) -> tuple[Counter[str], list[str]]:
    """The server's log lines (warning and above) by event, and the first few that are not
    refusals of new sessions."""
    events: Counter[str] = Counter()
    shown: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            event = str(json.loads(line).get("event", "?"))
        except (ValueError, AttributeError):
            event = "(not json)"
        events[event] += 1
        if event != "session_refused" and len(shown) < 8:
            shown.append(line if len(line) <= 300 else line[:300] + "...")
    return events, shown


# --- main ------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    prefix = args.user_prefix
    if prefix is None:
        prefix = "soak-" if args.start_server else f"soak-{uuid.uuid4().hex[:6]}-"
    prep_started = time.monotonic()
    capture = build_capture(args.wav, args.ref, args.minutes)
    plans = make_plans(args, capture, prefix)
    prep_seconds = time.monotonic() - prep_started
    load_start = os.getloadavg()

    server: Service | None = None
    url = args.url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    samples: list[Sample] = []
    evicted_after: float | None = None
    rss_evicted: float | None = None
    threads_evicted: int | None = None
    code_state = "n/a"
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        ready_seconds = None
        try:
            if args.start_server:
                code_state = git_state()
                log_path = Path(tempfile.mkdtemp(prefix="isweep-soak-")) / "server.log"
                server = Service(log_path)
                url = server.url
                started = time.monotonic()
                await server.wait_ready(http, args.ready_timeout)
                ready_seconds = time.monotonic() - started
            loop = asyncio.get_running_loop()
            run = Run(
                http,
                url,
                loop.time() + 1.0,
                args.blob_seconds,
                retry=not args.no_retry,
            )
            samples.append(await take_sample(run, server, 0.0))  # after ready, before traffic
            client_cpu_start = resource.getrusage(resource.RUSAGE_SELF)
            stop = asyncio.Event()
            sampling = asyncio.create_task(sampler(run, server, stop, samples))
            await asyncio.gather(*(run_session(run, plan) for plan in plans))
            stop.set()
            await sampling
            client_cpu_end = resource.getrusage(resource.RUSAGE_SELF)
            if server is not None and not args.no_eviction_wait:
                ttl = float(os.environ.get("ISWEEP_SESSION_TTL_SECONDS", "60"))
                evicted_after = await wait_evicted(run, ttl + EVICTION_SLACK_SECONDS)
                rss_evicted = proc_status_kb(server.proc.pid, "VmRSS") / 1024
                threads_evicted = proc_status_kb(server.proc.pid, "Threads")
        finally:
            exit_code = server.stop() if server else None
    load_end = os.getloadavg()

    # --- figures ----------------------------------------------------------------------------
    plan_of = {p.index: p for p in plans}
    figs = {
        (a.session, a.number): attempt_figures(plan_of[a.session], a, args.blob_seconds)
        for a in run.attempts
    }
    records = [r for a in run.attempts for r in a.records]
    windows = max(1, math.ceil(args.minutes - 1e-9))
    start_sample, end_sample = samples[0], samples[-1]
    wall = end_sample.t
    out: list[str] = []

    def line(name: str, value: str) -> None:
        out.append(f"{name}: {value}")

    line("mode", "overload" if args.overload else "soak")
    line("server", url + (" (started by bench)" if server else ""))
    if server is not None:
        line("server code", code_state)
    if ready_seconds is not None:
        line("server ready after s", fmt(ready_seconds, 1))
    line("sessions", str(args.sessions))
    line("minutes", fmt(args.minutes, 2))
    line(
        "capture per session",
        f"{capture.seconds:.1f} s of {args.wav.name} looped {capture.loops:.2f} times "
        f"({capture.loop_seconds:.2f} s a loop)"
        + (f"; silent from {capture.silenced_from:.1f} s" if capture.silenced_from else ""),
    )
    line("blobs per full capture", str(len(plans[0].blobs_b64)))
    line("session start offsets s", fmt(args.ramp_seconds, 2))
    line("refused sessions retry", "no" if args.no_retry else "yes, after Retry-After")
    line("wall seconds", fmt(wall, 1))
    line("client prep seconds (encode + local decode)", fmt(prep_seconds, 1))
    line(
        "client cpu seconds during run",
        fmt(
            (client_cpu_end.ru_utime + client_cpu_end.ru_stime)
            - (client_cpu_start.ru_utime + client_cpu_start.ru_stime),
            1,
        ),
    )
    line(
        "client send lateness max s", fmt(max((r.sent - r.scheduled for r in records), default=0.0))
    )
    line("machine load average start / end", f"{load_start[0]:.2f} / {load_end[0]:.2f}")
    line(
        f"cpu cores used of {os.cpu_count()}: server / others (mean over the run)",
        f"{fmt(cores(start_sample, end_sample, lambda s: s.server_cpu), 2)} / "
        f"{fmt(other_cores(start_sample, end_sample), 2)}",
    )

    # Memory.
    rss_source = "/proc VmRSS" if server is not None else "/metrics process_resident_memory_bytes"
    out.append(f"memory every {RSS_ROW_SECONDS:.0f} s ({rss_source}; fds and sessions: /metrics):")
    rows = [
        s
        for s in samples
        if s.mark is None or math.isclose(s.mark % RSS_ROW_SECONDS, 0.0, abs_tol=1e-6)
    ]
    out.extend(
        table(
            ["t", "rss MB", "threads", "open fds", "sessions", "buffered audio s"],
            (
                [
                    ("end " if s.mark is None else "") + clock(s.t),
                    fmt(s.rss_mb, 1),
                    "n/a" if s.threads is None else str(s.threads),
                    fmt(s.metrics.total("process_open_fds"), 0)
                    if s.metrics.has("process_open_fds")
                    else "n/a",
                    fmt(s.metrics.total("isweep_active_sessions"), 0)
                    if s.metrics.has("isweep_active_sessions")
                    else "n/a",
                    fmt(s.metrics.total("isweep_buffered_audio_seconds"), 1)
                    if s.metrics.has("isweep_buffered_audio_seconds")
                    else "n/a",
                ]
                for s in rows
            ),
        )
    )
    rss_points = [(s.t, s.rss_mb) for s in samples if s.rss_mb is not None]
    line("rss max MB", fmt(max((r for _, r in rss_points), default=None), 1))
    half = [(t, r) for t, r in rss_points if t >= wall / 2]
    slope: float | None = None
    if len(half) >= 3:
        slope = float(np.polyfit([t for t, _ in half], [r for _, r in half], 1)[0]) * 60
    line("rss slope over the second half MB/min", fmt(slope, 2))
    warm = [r for t, r in rss_points if t >= WINDOW_SECONDS]
    line(
        "rss growth from 1:00 to end MB",
        fmt(warm[-1] - warm[0] if len(warm) >= 2 else None, 1),
    )
    if server is not None and not args.no_eviction_wait:
        line(
            "sessions evicted after s",
            "not within the wait" if evicted_after is None else fmt(evicted_after, 1),
        )
        line("rss after sessions evicted MB", fmt(rss_evicted, 1))
        line(
            "threads after sessions evicted",
            "n/a" if threads_evicted is None else str(threads_evicted),
        )

    # Per-minute client view.
    words_by_window: list[list[float]] = [[] for _ in range(windows)]
    for f in figs.values():
        for w in f.words:
            words_by_window[window_of(w.arrived, windows)].append(w.latency)
    reqs_by_window: list[list[Record]] = [[] for _ in range(windows)]
    for r in records:
        reqs_by_window[window_of(r.sent, windows)].append(r)
    out.append(
        "per minute, client view (words by arrival, requests by send; latency and round trips "
        "in s; round trips of 200 answers only):"
    )
    client_rows = []
    for m in range(windows):
        lat = words_by_window[m]
        reqs = reqs_by_window[m]
        rtts = [r.rtt for r in reqs if r.ok and r.rtt is not None]
        client_rows.append(
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
    out.extend(
        table(
            [
                "minute",
                "words",
                "emit p50",
                "emit p95",
                "emit max",
                "rtt p50",
                "rtt p95",
                "requests",
                ">500ms",
                "errors",
                "late send",
            ],
            client_rows,
        )
    )

    # Per-minute server view from /metrics deltas.
    out.append(
        "per minute, server view (/metrics deltas; sessions and buffered at minute end; "
        f"CPU cores used of {os.cpu_count()}: the server, and everything else but this client):"
    )
    server_rows = []
    snapshots_ok = bool(start_sample.metrics) and bool(end_sample.metrics)
    for m in range(windows):
        a = start_sample if m == 0 else nearest(samples, m * WINDOW_SECONDS)
        b = end_sample if m == windows - 1 else nearest(samples, (m + 1) * WINDOW_SECONDS)
        if not (a.metrics and b.metrics) or b.t <= a.t:
            server_rows.append([str(m + 1), *["n/a"] * 12])
            continue
        passes = counter_delta(a.metrics, b.metrics, "isweep_passes_total")
        shed = counter_delta(a.metrics, b.metrics, "isweep_requests_shed_total")
        overwritten = counter_delta(a.metrics, b.metrics, "isweep_overwritten_audio_seconds_total")
        server_rows.append(
            [
                str(m + 1),
                fmt(None if passes is None else passes / (b.t - a.t), 2),
                fmt(hist_mean(a.metrics, b.metrics, "isweep_pass_queue_wait_seconds")),
                hist_max_bound(a.metrics, b.metrics, "isweep_pass_queue_wait_seconds"),
                fmt(hist_mean(a.metrics, b.metrics, "isweep_pass_duration_seconds")),
                fmt(hist_mean(a.metrics, b.metrics, "isweep_pass_audio_seconds"), 2),
                fmt(hist_mean(a.metrics, b.metrics, "isweep_word_emit_lag_seconds"), 2),
                fmt(shed, 0),
                fmt(overwritten, 2),
                fmt(b.metrics.total("isweep_active_sessions"), 0),
                fmt(b.metrics.total("isweep_buffered_audio_seconds"), 1),
                fmt(cores(a, b, lambda s: s.server_cpu), 2),
                fmt(other_cores(a, b), 2),
            ]
        )
    out.extend(
        table(
            [
                "minute",
                "passes/s",
                "qwait mean",
                "qwait max",
                "pass s",
                "pass audio s",
                "lag mean",
                "shed",
                "overwritten s",
                "sessions",
                "buffered s",
                "server cores",
                "other cores",
            ],
            server_rows,
        )
    )

    # Whole run, per session.
    admitted = {a.session: a for a in run.attempts if a.admitted}
    wers: list[float] = []
    for plan in plans:
        attempt = admitted.get(plan.index)
        if attempt is None:
            line(f"wer session {plan.index}", "n/a (never admitted)")
            continue
        f = figs[(attempt.session, attempt.number)]
        reference = capture.reference(f.heard_seconds)
        full = attempt.sent_blobs == len(plan.blobs_b64)
        what = (
            f"full capture, {f.heard_seconds:.0f} s"
            if full
            else f"partial capture from {attempt.start:.0f} s, {f.heard_seconds:.0f} s of audio"
        )
        if not reference:
            line(f"wer session {plan.index}", f"n/a (no reference; {what})")
            continue
        hyp = normalise(f.transcript)
        wer = float(jiwer.wer(normalise(reference), hyp)) if hyp else 1.0
        if full:
            wers.append(wer)
        line(f"wer session {plan.index}", f"{wer:.3f} ({what})")
    line("wer mean (full captures)", fmt(statistics.fmean(wers) if wers else None))
    all_lat = [w.latency for f in figs.values() for w in f.words]
    line("words emitted", str(len(all_lat)))
    line(
        "word-emit latency p50 / p95 / max s (whole run)",
        f"{fmt(pct(all_lat, 0.5))} / {fmt(pct(all_lat, 0.95))} / {fmt(max(all_lat, default=None))}",
    )
    line("words timed past the audio sent", str(sum(f.ahead_of_audio for f in figs.values())))
    line("segments going back in time", str(sum(f.backwards for f in figs.values())))
    admitted_figs = [figs[(a.session, a.number)] for a in admitted.values()]
    line(
        "longest time without a segment s (max over sessions)",
        fmt(max((f.longest_gap for f in admitted_figs), default=None), 1),
    )
    line(
        "sessions the extension would stop "
        f"(no segment for {EXTENSION_SILENCE_LIMIT_SECONDS:.0f} s)",
        str(sum(1 for f in admitted_figs if f.longest_gap > EXTENSION_SILENCE_LIMIT_SECONDS)),
    )
    line(
        f"slow round-trip streaks ({SLOW_STREAK} in a row over {SLOW_RTT_SECONDS * 1000:.0f} ms; "
        "the extension would restart its recorder)",
        str(sum(f.slow_streaks for f in admitted_figs)),
    )
    ok_rtts = [r.rtt for r in records if r.ok and r.rtt is not None]
    line("requests", str(len(records)))
    line(
        "round trip p50 / p95 / max s (200 answers)",
        f"{fmt(pct(ok_rtts, 0.5))} / {fmt(pct(ok_rtts, 0.95))} / {fmt(max(ok_rtts, default=None))}",
    )
    errors = [r for r in records if not r.ok]
    line(
        "non-200 answers by status and code",
        kinds_text(Counter(r.kind() for r in errors if r.status)),
    )
    line("connection errors", str(sum(1 for r in errors if r.status is None)))
    if snapshots_ok:
        ms, me = start_sample.metrics, end_sample.metrics
        run_passes = counter_delta(ms, me, "isweep_passes_total")
        line(
            "passes per second (whole run)",
            fmt(None if run_passes is None else run_passes / wall, 2),
        )
        line(
            "pass queue wait mean s (whole run)",
            fmt(hist_mean(ms, me, "isweep_pass_queue_wait_seconds")),
        )
        line(
            "server word-emit lag mean s (/metrics, whole run)",
            fmt(hist_mean(ms, me, "isweep_word_emit_lag_seconds")),
        )
        shed_end = me.by_label("isweep_requests_shed_total", "reason")
        shed_start = ms.by_label("isweep_requests_shed_total", "reason")
        shed_by_reason = {k: v - shed_start.get(k, 0.0) for k, v in shed_end.items()}
        line("isweep_requests_shed_total delta", fmt(sum(shed_by_reason.values()), 0))
        line(
            "isweep_requests_shed_total delta by reason",
            ",".join(f"{k}x{v:.0f}" for k, v in sorted(shed_by_reason.items()) if v) or "-",
        )
        line(
            "isweep_overwritten_audio_seconds_total delta",
            fmt(counter_delta(ms, me, "isweep_overwritten_audio_seconds_total"), 2),
        )
        for name in ("isweep_decode_errors_total", "isweep_hallucination_drops_total"):
            line(name + " delta", fmt(counter_delta(ms, me, name), 0))
    else:
        line("/metrics", "unavailable")

    # Admission and overload.
    if args.overload:
        out.append(
            f"overload timeline, every {TIMELINE_SECONDS:.0f} s (sessions tried/refused/admitted "
            "by the send time of their seq 0; latency by word arrival, s; the rest /metrics):"
        )
        out.extend(
            overload_timeline(samples, run.attempts, [w for f in figs.values() for w in f.words])
        )
    first = [a for a in run.attempts if a.number == 0]
    refusals = [a.refusal for a in run.attempts if a.refusal is not None]
    refusal_rtts = [r.rtt for r in refusals if r.rtt is not None]
    mid_session = [r for a in run.attempts if a.admitted for r in a.records if not r.ok]
    line("new-session attempts", str(len(run.attempts)))
    line("sessions admitted on their first attempt", str(sum(1 for a in first if a.admitted)))
    line(
        "sessions admitted after a refusal",
        str(sum(1 for a in run.attempts if a.admitted and a.number > 0)),
    )
    line("sessions never admitted", str(len(plans) - len(admitted)))
    line(
        "new sessions refused with 503 (sessions, answers)",
        f"{len({r.session for r in refusals if r.status == 503})}, "
        f"{sum(1 for r in refusals if r.status == 503)}",
    )
    line("refusals by status and code", kinds_text(Counter(r.kind() for r in refusals)))
    line(
        "refusal answer latency p50 / p95 / max s",
        f"{fmt(pct(refusal_rtts, 0.5))} / {fmt(pct(refusal_rtts, 0.95))} / "
        f"{fmt(max(refusal_rtts, default=None))}",
    )
    line(
        "admitted sessions answered non-200 later (the extension would fall back)",
        f"{len({r.session for r in mid_session})} sessions, {len(mid_session)} answers",
    )
    qwait_means = [
        q
        for s0, s1 in itertools.pairwise(samples)
        if s0.metrics
        and s1.metrics
        and (q := hist_mean(s0.metrics, s1.metrics, "isweep_pass_queue_wait_seconds")) is not None
    ]
    line(
        "max pass queue wait s (histogram bucket over the run)",
        hist_max_bound(start_sample.metrics, end_sample.metrics, "isweep_pass_queue_wait_seconds")
        if snapshots_ok
        else "n/a",
    )
    line(
        f"max pass queue wait mean over {SAMPLE_SECONDS:.0f} s samples s",
        fmt(max(qwait_means, default=None)),
    )
    line(
        "max active sessions (sampled)",
        fmt(
            max(
                (s.metrics.total("isweep_active_sessions") for s in samples if s.metrics),
                default=None,
            ),
            0,
        ),
    )
    line(
        "max buffered audio s (sampled)",
        fmt(
            max(
                (s.metrics.total("isweep_buffered_audio_seconds") for s in samples if s.metrics),
                default=None,
            ),
            1,
        ),
    )

    if server is not None:
        line(
            "server exit code",
            "killed after SIGTERM timeout" if exit_code is None else str(exit_code),
        )
        events, shown = log_events(server.log_path)
        line(
            "server log lines (warning and above) by event",
            ",".join(f"{k}x{n}" for k, n in sorted(events.items())) or "-",
        )
        out.extend(f"  {text}" for text in shown)
    for r in errors[:5]:
        out.append(f"  failed: session {r.session} attempt {r.attempt} seq {r.seq} {r.kind()}")
    if args.show_transcripts:
        for session, attempt in sorted(admitted.items()):
            out.append(
                f"transcript session {session}: {figs[(session, attempt.number)].transcript}"
            )

    # The summary lines, last.
    rss_start, rss_end = start_sample.rss_mb, end_sample.rss_mb
    line("rss start MB", fmt(rss_start, 1))
    line("rss end MB", fmt(rss_end, 1))
    line(
        "rss growth MB",
        fmt(None if rss_start is None or rss_end is None else rss_end - rss_start, 1),
    )
    first_p50, last_p50 = pct(words_by_window[0], 0.5), pct(words_by_window[-1], 0.5)
    line("latency p50 first minute / last minute", f"{fmt(first_p50)} s / {fmt(last_p50)} s")
    line("errors total", str(len(errors)))
    print("\n".join(out))
    if args.overload:
        refused = {id(r) for r in refusals if r.status == 503}
        return 0 if all(id(r) in refused for r in errors) else 1
    return 0 if not errors else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:8001", help="a running server")
    p.add_argument(
        "--start-server",
        action="store_true",
        help="start `python -m isweep_backend` on a free loopback port, measure it, stop it",
    )
    p.add_argument(
        "--sessions",
        type=int,
        default=None,
        help="concurrent sessions (default 4; 12 with --overload)",
    )
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    p.add_argument(
        "--overload",
        action="store_true",
        help="start sessions one by one beyond capacity and report how the service degrades",
    )
    p.add_argument(
        "--ramp-seconds",
        type=float,
        default=None,
        help="between session starts (default: blob-seconds / sessions; 5 with --overload)",
    )
    p.add_argument(
        "--no-retry",
        action="store_true",
        help="a refused session gives up for good (as the extension does) instead of starting "
        "a new capture after Retry-After",
    )
    p.add_argument("--wav", type=Path, default=REPO / "tests/fixtures/long.wav")
    p.add_argument(
        "--ref",
        type=Path,
        default=None,
        help="reference text of one loop (.txt, or .json with 'text'); default: the WAV's .json "
        "sidecar (its sentences) or .txt",
    )
    p.add_argument("--blob-seconds", type=float, default=1.0)
    p.add_argument(
        "--no-eviction-wait",
        action="store_true",
        help="with --start-server, do not wait for the sessions' TTL eviction to read the RSS",
    )
    p.add_argument(
        "--user-prefix",
        default=None,
        help="user_id prefix (default 'soak-', plus a run tag without --start-server)",
    )
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--show-transcripts", action="store_true")
    args = p.parse_args(argv)
    if args.sessions is None:
        args.sessions = 12 if args.overload else 4
    if args.ramp_seconds is None:
        args.ramp_seconds = 5.0 if args.overload else args.blob_seconds / args.sessions
    if args.sessions < 1 or args.minutes <= 0 or args.blob_seconds <= 0 or args.ramp_seconds < 0:
        p.error("--sessions >= 1; --minutes, --blob-seconds > 0; --ramp-seconds >= 0")
    if args.overload and (args.sessions - 1) * args.ramp_seconds >= args.minutes * 60:
        p.error("with --overload every session must start within --minutes")
    return args


def main() -> int:
    return asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    sys.exit(main())
