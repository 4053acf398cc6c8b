"""Running the soak: every session's blobs sent at real-time pace without waiting for earlier
answers, a refused session trying again after Retry-After, the server sampled every 5 s, and
(with a server it started) the wait for TTL eviction at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from ..client import Answer, AnsweredRequest, Chunk, post_chunk, sleep_until
from ..probes import (
    Snapshot,
    machine_busy_seconds,
    proc_cpu_seconds,
    proc_status_kb,
    scrape_snapshot,
)
from ..report import git_state, load_average
from ..service import Service
from .capture import Plan

SAMPLE_SECONDS = 5.0  # /metrics and RSS are sampled this often
DEFAULT_RETRY_AFTER_SECONDS = 2.0
MIN_RETRY_CAPTURE_SECONDS = 10.0  # a refused session tries again only if this much run is left
EVICTION_SLACK_SECONDS = 20.0
DEFAULT_SESSION_TTL_SECONDS = "60"


# --- sending ---------------------------------------------------------------------------------


@dataclass
class Record(AnsweredRequest):
    session: int
    attempt: int
    seq: int
    duplicate: bool
    scheduled: float  # run time the extension would have sent it
    answer: Answer  # times on the run's clock

    @property
    def code(self) -> str | None:
        """The error body's code."""
        return None if self.ok else self.answer.error_code()

    @property
    def retry_after(self) -> float | None:
        with contextlib.suppress(ValueError, TypeError):
            return None if self.answer.retry_after is None else float(self.answer.retry_after)
        return None

    def kind(self) -> str:
        """'503 overloaded', '429 rate_limited', 'conn ClientOSError', ..."""
        if self.status is None:
            return f"conn {type(self.answer.exception).__name__}"
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
    records: list[Record] = field(default_factory=list)  # in send order

    def answered(self, record: Record) -> None:
        if record.ok:
            self.admitted = True
        elif not self.admitted and self.refusal is None:
            self.refusal = record


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
) -> Record:
    chunk = Chunk(
        plan.user_id, plan.tab_id, seq, round(seq * run.blob_seconds, 3), plan.blobs_b64[seq]
    )
    answer = await post_chunk(run.http, run.url, chunk, clock=run.now)
    record = Record(plan.index, attempt.number, seq, duplicate, scheduled, answer)
    attempt.answered(record)
    return record


async def run_attempt(run: Run, plan: Plan, attempt: Attempt) -> None:
    """Send the blobs at real-time pace, each without waiting for earlier answers; stop once
    the session was refused (the extension gives up on any non-2xx)."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Record]] = []
    for seq in range(attempt.blobs):
        at = attempt.start + seq * run.blob_seconds
        await sleep_until(loop, run.t0 + at)
        if attempt.refusal is not None:
            break
        tasks.append(asyncio.create_task(post(run, plan, attempt, seq, False, at)))
        attempt.sent_blobs += 1
    attempt.records = list(await asyncio.gather(*tasks))


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
        start = max(run.now(), refusal.received + wait)
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


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def take_sample(run: Run, server: Service | None, mark: float | None) -> Sample:
    t = run.now()
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
    return Sample(
        mark,
        t,
        metrics,
        rss_mb,
        threads,
        server_cpu,
        client_cpu_seconds(),
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


# --- the whole run ---------------------------------------------------------------------------


@dataclass
class Eviction:
    """With a server the soak started: once TTL eviction removed every session."""

    after_seconds: float | None  # None: not within the wait
    rss_mb: float
    threads: int


@dataclass
class SoakResult:
    """Everything the run measured; `samples[0]` is after ready, before any traffic."""

    url: str
    server: Service | None
    code_state: str  # the commit the started server runs ("n/a" against --url)
    ready_seconds: float | None
    attempts: list[Attempt]
    samples: list[Sample]
    client_cpu: float  # this process's CPU seconds while the sessions ran
    load_start: float
    load_end: float
    eviction: Eviction | None
    exit_code: int | None

    @property
    def records(self) -> list[Record]:
        return [r for a in self.attempts for r in a.records]


async def stream_sessions(
    run: Run, server: Service | None, plans: list[Plan], samples: list[Sample]
) -> float:
    """Every session to its end while the sampler runs; this process's CPU seconds meanwhile."""
    samples.append(await take_sample(run, server, 0.0))  # after ready, before traffic
    client_cpu_start = client_cpu_seconds()
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(run, server, stop, samples))
    await asyncio.gather(*(run_session(run, plan) for plan in plans))
    stop.set()
    await sampling
    return client_cpu_seconds() - client_cpu_start


async def wait_for_eviction(run: Run, server: Service) -> Eviction:
    ttl = float(os.environ.get("ISWEEP_SESSION_TTL_SECONDS", DEFAULT_SESSION_TTL_SECONDS))
    after = await wait_evicted(run, ttl + EVICTION_SLACK_SECONDS)
    return Eviction(
        after,
        proc_status_kb(server.proc.pid, "VmRSS") / 1024,
        proc_status_kb(server.proc.pid, "Threads"),
    )


async def soak(
    http: aiohttp.ClientSession, args: argparse.Namespace, plans: list[Plan]
) -> SoakResult:
    """Start the server (with --start-server), run every session, sample, stop the server."""
    load_start = load_average()
    server: Service | None = None
    url = args.url.rstrip("/")
    ready_seconds: float | None = None
    code_state = "n/a"
    samples: list[Sample] = []
    eviction: Eviction | None = None
    try:
        if args.start_server:
            code_state = git_state()
            server = Service(Path(tempfile.mkdtemp(prefix="isweep-soak-")) / "server.log")
            url = server.url
            started = time.monotonic()
            await server.wait_ready(http, args.ready_timeout)
            ready_seconds = time.monotonic() - started
        loop = asyncio.get_running_loop()
        run = Run(http, url, loop.time() + 1.0, args.blob_seconds, retry=not args.no_retry)
        client_cpu = await stream_sessions(run, server, plans, samples)
        if server is not None and not args.no_eviction_wait:
            eviction = await wait_for_eviction(run, server)
    finally:
        exit_code = server.stop() if server else None
    return SoakResult(
        url=url,
        server=server,
        code_state=code_state,
        ready_seconds=ready_seconds,
        attempts=run.attempts,
        samples=samples,
        client_cpu=client_cpu,
        load_start=load_start,
        load_end=load_average(),
        eviction=eviction,
        exit_code=exit_code,
    )
