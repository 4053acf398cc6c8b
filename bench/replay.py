"""Replay a recorded stream against a running isweep-backend at real-time pace.

N concurrent sessions each send a WAV file, encoded like Chrome's MediaRecorder (WebM/Opus live
stream, cut at arbitrary byte offsets into ~1 s blobs), one POST per blob at the pace the
extension would, without waiting for earlier answers. Prints plain `name: value` lines.

    python -m bench.replay --start-server --sessions 4
    python -m bench.replay --url http://127.0.0.1:8001 --sessions 2 --wav tests/fixtures/long.wav
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import resource
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from isweep_backend.timeline import SAMPLE_RATE
from tests.audio_tools import encode_opus_stream, read_wav

from . import REPO
from .client import (
    SLOW_RTT_SECONDS,
    Answer,
    AnsweredRequest,
    Chunk,
    post_chunk,
    sleep_until,
)
from .probes import delta, proc_cpu_seconds, proc_status_kb, scrape
from .report import Report, fmt, server_log_problems
from .service import Service, add_service_arguments
from .stats import pct, transcript_wer, words_of
from .streams import load_reference, session_blobs

# The capture goes on after the speech, as a tab's does: the last words ride on the answers
# to these blobs of silence. Nothing is sent after the last blob (the extension never does).
TAIL_SILENCE_SECONDS = 3.0
FINAL_WORD_TOLERANCE_SECONDS = 0.75  # a word ending this close to the speech end is "final"


# --- preparation ---------------------------------------------------------------------------


@dataclass
class SessionPlan:
    index: int
    user_id: str
    tab_id: int
    blobs_b64: list[str]
    blob_end_samples: list[int]  # cumulative 16 kHz samples decoded after each blob
    speech_end_sample: int  # where the last word of the WAV ends on the session timeline
    speech_end_blob: int  # the blob holding that sample


def speech_end_seconds(wav: Path, pcm: np.ndarray, rate: int) -> float:
    """End of the last sentence, from the fixture's sidecar JSON; else the end of the last
    20 ms frame louder than 5 % of the loudest frame's RMS."""
    sidecar = wav.with_suffix(".json")
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError, TypeError):
        return float(json.loads(sidecar.read_text(encoding="utf-8"))["sentences"][-1]["end_s"])
    hop = rate // 50
    frames = pcm[: pcm.size // hop * hop].reshape(-1, hop)
    if not frames.size:
        return pcm.size / rate
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > max(0.05 * rms.max(), 1e-4))
    return (int(loud[-1]) + 1) * hop / rate if loud.size else pcm.size / rate


def prepare(args: argparse.Namespace, prefix: str) -> tuple[list[SessionPlan], float]:
    one, rate = read_wav(args.wav)
    pcm = np.concatenate([one] * args.repeat)
    speech_end = round(speech_end_seconds(args.wav, one, rate) * SAMPLE_RATE)
    speech_end += round((args.repeat - 1) * one.size * SAMPLE_RATE / rate)
    pcm = np.concatenate([pcm, np.zeros(round(TAIL_SILENCE_SECONDS * rate), np.float32)])
    audio_seconds = pcm.size / rate
    stream = encode_opus_stream(pcm, rate)
    plans = []
    for i in range(args.sessions):
        cut = session_blobs(stream, args.blob_seconds, seed=i)
        ends = cut.end_samples
        plans.append(
            SessionPlan(
                index=i,
                user_id=f"{prefix}{i}",
                tab_id=i,
                blobs_b64=cut.blobs_b64,
                blob_end_samples=ends,
                speech_end_sample=speech_end,
                speech_end_blob=min(bisect.bisect_left(ends, speech_end), len(ends) - 1),
            )
        )
    return plans, audio_seconds


# --- the replay -----------------------------------------------------------------------------


@dataclass
class Record(AnsweredRequest):
    session: int
    seq: int
    duplicate: bool
    answer: Answer

    @property
    def error(self) -> str | None:
        """The error body's start, or the exception, for an answer other than 200."""
        if self.answer.exception is not None:
            return repr(self.answer.exception)
        return None if self.answer.ok else self.answer.text(200)


async def post(
    http: aiohttp.ClientSession,
    url: str,
    plan: SessionPlan,
    seq: int,
    start_seconds: float,
    duplicate: bool,
) -> Record:
    chunk = Chunk(plan.user_id, plan.tab_id, seq, start_seconds, plan.blobs_b64[seq])
    return Record(plan.index, seq, duplicate, await post_chunk(http, url, chunk))


async def run_session(
    http: aiohttp.ClientSession,
    url: str,
    plan: SessionPlan,
    t0: float,
    blob_seconds: float,
    lateness: list[float],
) -> list[Record]:
    loop = asyncio.get_running_loop()
    tasks = []
    schedule = [(seq, t0 + seq * blob_seconds, False) for seq in range(len(plan.blobs_b64))]
    for seq, at, duplicate in schedule:
        lateness.append(await sleep_until(loop, at))
        start_seconds = round(seq * blob_seconds, 3)
        tasks.append(asyncio.create_task(post(http, url, plan, seq, start_seconds, duplicate)))
    return list(await asyncio.gather(*tasks))


@dataclass
class Measured:
    """What one replay measured, on the client and on the server."""

    url: str
    server: Service | None
    ready_seconds: float | None
    records: list[Record]  # in send order
    lateness: list[float]
    wall: float
    client_cpu: float
    metrics_start: dict[str, float]
    metrics_end: dict[str, float]
    cpu: float | None  # the server's CPU seconds over the replay (/proc or /metrics)
    cpu_source: str
    rss_ready_kb: int | None
    hwm_kb: int | None
    exit_code: int | None = None


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def replay_all(
    http: aiohttp.ClientSession, url: str, plans: list[SessionPlan], blob_seconds: float
) -> tuple[list[Record], list[float]]:
    """Every session, started blob_seconds / N apart; the records in send order."""
    lateness: list[float] = []
    t_base = asyncio.get_running_loop().time() + 0.5
    stagger = blob_seconds / len(plans)
    per_session = await asyncio.gather(
        *(
            run_session(http, url, plan, t_base + plan.index * stagger, blob_seconds, lateness)
            for plan in plans
        )
    )
    records = sorted((r for rs in per_session for r in rs), key=lambda r: r.sent)
    return records, lateness


async def measure(
    http: aiohttp.ClientSession, args: argparse.Namespace, plans: list[SessionPlan]
) -> Measured:
    """Start the server (with --start-server), replay, and read the server before and after."""
    server: Service | None = None
    url = args.url.rstrip("/")
    ready_seconds = None
    try:
        if args.start_server:
            server = Service(Path(tempfile.mkdtemp(prefix="isweep-bench-")) / "server.log")
            url = server.url
            started = time.monotonic()
            await server.wait_ready(http, args.ready_timeout)
            ready_seconds = time.monotonic() - started
        pid = server.proc.pid if server else None
        metrics_start = await scrape(http, url)
        cpu_start = None if pid is None else proc_cpu_seconds(pid)
        rss_ready_kb = None if pid is None else proc_status_kb(pid, "VmRSS")
        client_cpu_start = client_cpu_seconds()
        records, lateness = await replay_all(http, url, plans, args.blob_seconds)
        wall = max(r.received for r in records) - min(r.sent for r in records)
        client_cpu = client_cpu_seconds() - client_cpu_start
        metrics_end = await scrape(http, url)
        cpu_end = None if pid is None else proc_cpu_seconds(pid)
        hwm_kb = None if pid is None else proc_status_kb(pid, "VmHWM")
    finally:
        exit_code = server.stop() if server else None
    cpu: float | None
    if cpu_start is not None and cpu_end is not None:
        cpu, cpu_source = cpu_end - cpu_start, "/proc"
    else:
        cpu = delta(metrics_end, metrics_start, "process_cpu_seconds_total")
        cpu_source = "/metrics"
    return Measured(
        url=url,
        server=server,
        ready_seconds=ready_seconds,
        records=records,
        lateness=lateness,
        wall=wall,
        client_cpu=client_cpu,
        metrics_start=metrics_start,
        metrics_end=metrics_end,
        cpu=cpu,
        cpu_source=cpu_source,
        rss_ready_kb=rss_ready_kb,
        hwm_kb=hwm_kb,
        exit_code=exit_code,
    )


# --- figures --------------------------------------------------------------------------------


@dataclass
class SessionFigures:
    transcript: str = ""
    latencies: list[float] = field(default_factory=list)
    ahead_of_audio: int = 0  # words whose end lies in a blob not yet sent when they arrived
    backwards: int = 0  # segments whose end went back in time (the extension drops them)
    # Arrival of the final word (the one ending the speech) - send of the blob holding the
    # speech end; None when the final words never arrived.
    backlog: float | None = None
    last_word_end: float | None = None  # seconds on the session timeline


def session_figures(plan: SessionPlan, records: list[Record]) -> SessionFigures:
    mine = [r for r in records if r.session == plan.index]
    first_send = {r.seq: r.sent for r in sorted(mine, key=lambda r: r.sent) if not r.duplicate}
    speech_end_sent = first_send.get(plan.speech_end_blob)
    final_from = (plan.speech_end_sample / SAMPLE_RATE) - FINAL_WORD_TOLERANCE_SECONDS
    final_at: float | None = None
    answered = sorted((r for r in mine if r.segments()), key=lambda r: r.received)
    figures = SessionFigures()
    texts: list[str] = []
    last_end = -1.0
    n_blobs = len(plan.blob_end_samples)
    for record in answered:
        for segment in record.segments():
            texts.append(str(segment.get("text", "")))
            if float(segment["end_seconds"]) < last_end:
                figures.backwards += 1
            last_end = max(last_end, float(segment["end_seconds"]))
            for _, end_seconds in words_of(segment):
                figures.last_word_end = max(figures.last_word_end or 0.0, end_seconds)
                if final_at is None and end_seconds >= final_from:
                    final_at = record.received
                sample = round(end_seconds * SAMPLE_RATE)
                blob = min(bisect.bisect_left(plan.blob_end_samples, sample), n_blobs - 1)
                sent = first_send.get(blob)
                if sent is None:
                    continue
                latency = record.received - sent
                if latency < 0:
                    figures.ahead_of_audio += 1
                figures.latencies.append(latency)
    figures.transcript = " ".join(texts)
    if final_at is not None and speech_end_sent is not None:
        figures.backlog = final_at - speech_end_sent
    return figures


# --- the report -----------------------------------------------------------------------------


def report_run(
    out: Report,
    args: argparse.Namespace,
    m: Measured,
    plans: list[SessionPlan],
    audio_seconds: float,
    prep_seconds: float,
) -> None:
    out.line("server", m.url + (" (started by bench)" if m.server else ""))
    if m.ready_seconds is not None:
        out.line("server ready after s", fmt(m.ready_seconds, 1))
    out.line("sessions", str(args.sessions))
    out.line("blob seconds", fmt(args.blob_seconds, 2))
    out.line("blobs per session", str(len(plans[0].blobs_b64)))
    out.line("audio seconds per session", fmt(audio_seconds, 2))
    out.line("wall seconds", fmt(m.wall, 2))
    out.line("client prep seconds (encode + local decode)", fmt(prep_seconds, 2))
    out.line("client cpu seconds during run", fmt(m.client_cpu, 2))
    out.line("client send lateness max s", fmt(max(m.lateness, default=0.0)))


def report_words(
    out: Report,
    plans: list[SessionPlan],
    per_session: list[SessionFigures],
    reference: str | None,
) -> None:
    if reference is not None:
        wers = []
        for plan, figs in zip(plans, per_session, strict=True):
            wer = transcript_wer(reference, figs.transcript)
            wers.append(wer)
            out.line(f"wer session {plan.index}", fmt(wer))
        out.line("wer mean", fmt(statistics.fmean(wers)))
    else:
        out.line("wer", "n/a (no reference)")
    latencies = [x for figs in per_session for x in figs.latencies]
    out.line("words emitted", str(len(latencies)))
    out.line("word-emit latency p50 s", fmt(pct(latencies, 0.50)))
    out.line("word-emit latency p95 s", fmt(pct(latencies, 0.95)))
    out.line("word-emit latency max s", fmt(max(latencies, default=None)))
    out.line("words timed past the audio sent", str(sum(f.ahead_of_audio for f in per_session)))
    out.line("segments going back in time", str(sum(f.backwards for f in per_session)))


def report_backlog(
    out: Report, plans: list[SessionPlan], per_session: list[SessionFigures]
) -> None:
    out.line("speech ends at s", fmt(plans[0].speech_end_sample / SAMPLE_RATE, 2))
    for plan, figs in zip(plans, per_session, strict=True):
        value = fmt(figs.backlog)
        if figs.backlog is None:
            value = f"never (last word received ends at {fmt(figs.last_word_end, 2)} s)"
        out.line(f"backlog session {plan.index} s", value)
    backlogs = [f.backlog for f in per_session if f.backlog is not None]
    out.line("backlog max s", fmt(max(backlogs, default=None)))
    out.line("sessions missing their final words", str(len(per_session) - len(backlogs)))


def report_server(out: Report, m: Measured, total_audio: float) -> None:
    """Passes from /metrics, the server's CPU and memory."""
    passes = delta(m.metrics_end, m.metrics_start, "isweep_passes_total")
    out.line("passes", "n/a" if passes is None else str(round(passes)))
    out.line("passes per second", fmt(None if passes is None else passes / m.wall, 2))
    for label, base in (
        ("pass duration mean s", "isweep_pass_duration_seconds"),
        ("pass queue wait mean s", "isweep_pass_queue_wait_seconds"),
        ("pass audio mean s", "isweep_pass_audio_seconds"),
        ("server word-emit lag mean s", "isweep_word_emit_lag_seconds"),
    ):
        total = delta(m.metrics_end, m.metrics_start, base + "_sum")
        count = delta(m.metrics_end, m.metrics_start, base + "_count")
        out.line(label, fmt(total / count if total is not None and count else None))
    out.line(f"server cpu seconds ({m.cpu_source})", fmt(m.cpu, 2))
    out.line(
        "server cpu seconds per audio second", fmt(None if m.cpu is None else m.cpu / total_audio)
    )
    if m.hwm_kb is not None:
        out.line("server rss after ready MB (/proc VmRSS)", fmt((m.rss_ready_kb or 0) / 1024, 1))
        out.line("server peak rss MB (/proc VmHWM)", fmt(m.hwm_kb / 1024, 1))
    else:
        rss = [
            snapshot["process_resident_memory_bytes"]
            for snapshot in (m.metrics_start, m.metrics_end)
            if "process_resident_memory_bytes" in snapshot
        ]
        out.line("server rss start MB (/metrics)", fmt(rss[0] / 2**20 if rss else None, 1))
        out.line("server rss end MB (/metrics)", fmt(rss[-1] / 2**20 if rss else None, 1))


def report_requests(out: Report, m: Measured) -> None:
    """Round trips, and the /metrics counters of trouble."""
    rtts = [r.rtt for r in m.records]
    out.line("requests", str(len(m.records)))
    out.line("non-200 responses", str(sum(1 for r in m.records if r.status != 200)))
    out.line(
        f"round trips over {int(SLOW_RTT_SECONDS * 1000)} ms",
        str(sum(1 for x in rtts if x > SLOW_RTT_SECONDS)),
    )
    out.line("round trip min s", fmt(min(rtts, default=None)))
    out.line("round trip p50 s", fmt(pct(rtts, 0.50)))
    out.line("round trip p95 s", fmt(pct(rtts, 0.95)))
    out.line("round trip max s", fmt(max(rtts, default=None)))
    for name in (
        "isweep_decode_errors_total",
        "isweep_hallucination_drops_total",
        "isweep_overwritten_audio_seconds_total",
        "isweep_requests_shed_total",
    ):
        d = delta(m.metrics_end, m.metrics_start, name) or 0.0  # no children yet = none counted
        if m.metrics_end:
            out.line(
                name.removeprefix("isweep_") + " delta",
                fmt(d, 2) if "seconds" in name else str(round(d)),
            )


def report_problems(out: Report, m: Measured) -> None:
    """The server's exit and log, the first failed and slow requests."""
    if m.server is not None:
        out.line(
            "server exit code",
            "killed after SIGTERM timeout" if m.exit_code is None else str(m.exit_code),
        )
        count, shown = server_log_problems(m.server.log_path)
        out.line("server log lines (warning and above)", str(count))
        out.text(*(f"  {text}" for text in shown))
    for r in [r for r in m.records if r.status != 200][:5]:
        out.text(f"  failed: session {r.session} seq {r.seq} status {r.status} {r.error}")
    for r in [r for r in m.records if r.rtt > SLOW_RTT_SECONDS][:5]:
        kind = " (duplicate)" if r.duplicate else ""
        out.text(f"  slow: session {r.session} seq {r.seq}{kind} round trip {fmt(r.rtt)} s")


# --- main -----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    prefix = args.user_prefix
    if prefix is None:
        # A fresh server has no old sessions; a long-running one may still hold this
        # benchmark's previous sessions (same seq 0 bytes = a resend), so tag the run.
        prefix = "bench-" if args.start_server else f"bench-{uuid.uuid4().hex[:6]}-"
    reference = load_reference(args.wav, args.ref)
    if reference is not None:
        reference = " ".join([reference] * args.repeat)
    prep_started = time.monotonic()
    plans, audio_seconds = prepare(args, prefix)
    prep_seconds = time.monotonic() - prep_started

    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        m = await measure(http, args, plans)

    per_session = [session_figures(plan, m.records) for plan in plans]
    out = Report()
    report_run(out, args, m, plans, audio_seconds, prep_seconds)
    report_words(out, plans, per_session, reference)
    report_backlog(out, plans, per_session)
    report_server(out, m, audio_seconds * args.sessions)
    report_requests(out, m)
    report_problems(out, m)
    if args.show_transcripts:
        for plan, figs in zip(plans, per_session, strict=True):
            out.text(f"transcript session {plan.index}: {figs.transcript}")
    out.print()
    return 0 if all(r.status == 200 for r in m.records) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_service_arguments(p)
    p.add_argument("--sessions", type=int, default=1)
    p.add_argument("--wav", type=Path, default=REPO / "tests/fixtures/long.wav")
    p.add_argument(
        "--ref",
        type=Path,
        default=None,
        help="reference text (.txt, or .json with a 'text' field); default: the "
        "WAV's .json or .txt sidecar",
    )
    p.add_argument("--blob-seconds", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=1, help="loop the audio this many times")
    p.add_argument(
        "--user-prefix",
        default=None,
        help="user_id prefix (default 'bench-', plus a run tag without --start-server)",
    )
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--show-transcripts", action="store_true")
    args = p.parse_args(argv)
    if args.sessions < 1 or args.repeat < 1 or args.blob_seconds <= 0:
        p.error("--sessions, --repeat >= 1; --blob-seconds > 0")
    return args


def main() -> int:
    return asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    sys.exit(main())
