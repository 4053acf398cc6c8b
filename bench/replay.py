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
import base64
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
from typing import Any

import aiohttp
import jiwer
import numpy as np

from isweep_backend.decode import SAMPLE_RATE
from tests.audio_tools import cut_blobs, encode_opus_stream, read_wav

from .benchlib import (
    MIME,
    REPO,
    SLOW_RTT_SECONDS,
    Server,
    blob_end_samples,
    delta,
    fmt,
    load_reference,
    normalise,
    pct,
    proc_cpu_seconds,
    proc_status_kb,
    scrape,
    server_log_problems,
    sleep_until,
    words_of,
)

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
        blobs = cut_blobs(stream, seconds=args.blob_seconds, seed=i)
        ends = blob_end_samples(blobs)
        plans.append(
            SessionPlan(
                index=i,
                user_id=f"{prefix}{i}",
                tab_id=i,
                blobs_b64=[base64.b64encode(b).decode("ascii") for b in blobs],
                blob_end_samples=ends,
                speech_end_sample=speech_end,
                speech_end_blob=min(bisect.bisect_left(ends, speech_end), len(ends) - 1),
            )
        )
    return plans, audio_seconds


# --- the replay -----------------------------------------------------------------------------


@dataclass
class Record:
    session: int
    seq: int
    duplicate: bool
    sent: float
    received: float | None = None
    status: int | None = None
    error: str | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rtt(self) -> float | None:
        return None if self.received is None else self.received - self.sent


async def post(
    http: aiohttp.ClientSession,
    url: str,
    plan: SessionPlan,
    seq: int,
    start_seconds: float,
    duplicate: bool,
    records: list[Record],
) -> None:
    body = {
        "user_id": plan.user_id,
        "tab_id": plan.tab_id,
        "seq": seq,
        "chunk_start_seconds": start_seconds,
        "mime_type": MIME,
        "audio_b64": plan.blobs_b64[seq],
    }
    loop = asyncio.get_running_loop()
    record = Record(plan.index, seq, duplicate, loop.time())
    records.append(record)
    try:
        async with http.post(url + "/asr/stream", json=body) as resp:
            record.status = resp.status
            raw = await resp.read()
            record.received = loop.time()
        if record.status == 200:
            record.segments = list(json.loads(raw).get("segments", []))
        else:
            record.error = raw[:200].decode("utf-8", "replace")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        record.received = loop.time()
        record.error = repr(exc)


async def run_session(
    http: aiohttp.ClientSession,
    url: str,
    plan: SessionPlan,
    t0: float,
    blob_seconds: float,
    records: list[Record],
    lateness: list[float],
) -> None:
    loop = asyncio.get_running_loop()
    tasks = []
    schedule = [(seq, t0 + seq * blob_seconds, False) for seq in range(len(plan.blobs_b64))]
    for seq, at, duplicate in schedule:
        lateness.append(await sleep_until(loop, at))
        tasks.append(
            asyncio.create_task(
                post(http, url, plan, seq, round(seq * blob_seconds, 3), duplicate, records)
            )
        )
    await asyncio.gather(*tasks)


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
    answered = sorted(
        (r for r in mine if r.segments and r.received is not None), key=lambda r: r.received or 0.0
    )
    figures = SessionFigures()
    texts: list[str] = []
    last_end = -1.0
    n_blobs = len(plan.blob_end_samples)
    for record in answered:
        assert record.received is not None
        for segment in record.segments:
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

    server: Server | None = None
    url = args.url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        ready_seconds = None
        try:
            if args.start_server:
                log_path = Path(tempfile.mkdtemp(prefix="isweep-bench-")) / "server.log"
                server = Server(log_path)
                url = server.url
                ready_seconds = await server.wait_ready(http, args.ready_timeout)
            loop = asyncio.get_running_loop()
            metrics_start = await scrape(http, url)
            cpu_start = proc_cpu_seconds(server.proc.pid) if server else None
            rss_ready_kb = proc_status_kb(server.proc.pid, "VmRSS") if server else None
            client_cpu_start = resource.getrusage(resource.RUSAGE_SELF)

            records: list[Record] = []
            lateness: list[float] = []
            t_base = loop.time() + 0.5
            stagger = args.blob_seconds / args.sessions
            await asyncio.gather(
                *(
                    run_session(
                        http,
                        url,
                        plan,
                        t_base + plan.index * stagger,
                        args.blob_seconds,
                        records,
                        lateness,
                    )
                    for plan in plans
                )
            )
            wall = max(r.received or r.sent for r in records) - min(r.sent for r in records)

            client_cpu_end = resource.getrusage(resource.RUSAGE_SELF)
            metrics_end = await scrape(http, url)
            cpu_end = proc_cpu_seconds(server.proc.pid) if server else None
            hwm_kb = proc_status_kb(server.proc.pid, "VmHWM") if server else None
        finally:
            exit_code = server.stop() if server else None

    # --- figures ----------------------------------------------------------------------------
    per_session = [session_figures(plan, records) for plan in plans]
    total_audio = audio_seconds * args.sessions
    out: list[str] = []

    def line(name: str, value: str) -> None:
        out.append(f"{name}: {value}")

    line("server", url + (" (started by bench)" if server else ""))
    if ready_seconds is not None:
        line("server ready after s", fmt(ready_seconds, 1))
    line("sessions", str(args.sessions))
    line("blob seconds", fmt(args.blob_seconds, 2))
    line("blobs per session", str(len(plans[0].blobs_b64)))
    line("audio seconds per session", fmt(audio_seconds, 2))
    line("wall seconds", fmt(wall, 2))
    line("client prep seconds (encode + local decode)", fmt(prep_seconds, 2))
    line(
        "client cpu seconds during run",
        fmt(
            (client_cpu_end.ru_utime + client_cpu_end.ru_stime)
            - (client_cpu_start.ru_utime + client_cpu_start.ru_stime),
            2,
        ),
    )
    line("client send lateness max s", fmt(max(lateness, default=0.0)))

    if reference is not None:
        wers = []
        for plan, figs in zip(plans, per_session, strict=True):
            hyp = normalise(figs.transcript)
            wer = float(jiwer.wer(normalise(reference), hyp)) if hyp else 1.0
            wers.append(wer)
            line(f"wer session {plan.index}", fmt(wer))
        line("wer mean", fmt(statistics.fmean(wers)))
    else:
        line("wer", "n/a (no reference)")

    latencies = [x for figs in per_session for x in figs.latencies]
    line("words emitted", str(len(latencies)))
    line("word-emit latency p50 s", fmt(pct(latencies, 0.50)))
    line("word-emit latency p95 s", fmt(pct(latencies, 0.95)))
    line("word-emit latency max s", fmt(max(latencies, default=None)))
    line("words timed past the audio sent", str(sum(f.ahead_of_audio for f in per_session)))
    line("segments going back in time", str(sum(f.backwards for f in per_session)))

    line("speech ends at s", fmt(plans[0].speech_end_sample / SAMPLE_RATE, 2))
    for plan, figs in zip(plans, per_session, strict=True):
        value = fmt(figs.backlog)
        if figs.backlog is None:
            value = f"never (last word received ends at {fmt(figs.last_word_end, 2)} s)"
        line(f"backlog session {plan.index} s", value)
    backlogs = [f.backlog for f in per_session if f.backlog is not None]
    line("backlog max s", fmt(max(backlogs, default=None)))
    line("sessions missing their final words", str(len(per_session) - len(backlogs)))

    passes = delta(metrics_end, metrics_start, "isweep_passes_total")
    line("passes", "n/a" if passes is None else str(round(passes)))
    line("passes per second", fmt(None if passes is None else passes / wall, 2))
    for label, base in (
        ("pass duration mean s", "isweep_pass_duration_seconds"),
        ("pass queue wait mean s", "isweep_pass_queue_wait_seconds"),
        ("pass audio mean s", "isweep_pass_audio_seconds"),
        ("server word-emit lag mean s", "isweep_word_emit_lag_seconds"),
    ):
        total = delta(metrics_end, metrics_start, base + "_sum")
        count = delta(metrics_end, metrics_start, base + "_count")
        line(label, fmt(total / count if total is not None and count else None))

    cpu: float | None
    if server is not None and cpu_start is not None and cpu_end is not None:
        cpu = cpu_end - cpu_start
        cpu_source = "/proc"
    else:
        cpu = delta(metrics_end, metrics_start, "process_cpu_seconds_total")
        cpu_source = "/metrics"
    line(f"server cpu seconds ({cpu_source})", fmt(cpu, 2))
    line("server cpu seconds per audio second", fmt(None if cpu is None else cpu / total_audio))
    if hwm_kb is not None:
        line("server rss after ready MB (/proc VmRSS)", fmt((rss_ready_kb or 0) / 1024, 1))
        line("server peak rss MB (/proc VmHWM)", fmt(hwm_kb / 1024, 1))
    else:
        rss = [
            m["process_resident_memory_bytes"]
            for m in (metrics_start, metrics_end)
            if "process_resident_memory_bytes" in m
        ]
        line("server rss start MB (/metrics)", fmt(rss[0] / 2**20 if rss else None, 1))
        line("server rss end MB (/metrics)", fmt(rss[-1] / 2**20 if rss else None, 1))

    rtts = [r.rtt for r in records if r.rtt is not None]
    line("requests", str(len(records)))
    line("non-200 responses", str(sum(1 for r in records if r.status != 200)))
    line(
        f"round trips over {int(SLOW_RTT_SECONDS * 1000)} ms",
        str(sum(1 for x in rtts if x > SLOW_RTT_SECONDS)),
    )
    line("round trip min s", fmt(min(rtts, default=None)))
    line("round trip p50 s", fmt(pct(rtts, 0.50)))
    line("round trip p95 s", fmt(pct(rtts, 0.95)))
    line("round trip max s", fmt(max(rtts, default=None)))

    for name in (
        "isweep_decode_errors_total",
        "isweep_hallucination_drops_total",
        "isweep_overwritten_audio_seconds_total",
        "isweep_requests_shed_total",
    ):
        d = delta(metrics_end, metrics_start, name) or 0.0  # no children yet = none counted
        if metrics_end:
            line(
                name.removeprefix("isweep_") + " delta",
                fmt(d, 2) if "seconds" in name else str(round(d)),
            )
    if server is not None:
        line(
            "server exit code",
            "killed after SIGTERM timeout" if exit_code is None else str(exit_code),
        )
        count, shown = server_log_problems(server.log_path)
        line("server log lines (warning and above)", str(count))
        for text in shown:
            out.append(f"  {text}")
    errors = [r for r in records if r.status != 200]
    for r in errors[:5]:
        out.append(f"  failed: session {r.session} seq {r.seq} status {r.status} {r.error}")
    slow = [r for r in records if (r.rtt or 0.0) > SLOW_RTT_SECONDS]
    for r in slow[:5]:
        kind = " (duplicate)" if r.duplicate else ""
        out.append(f"  slow: session {r.session} seq {r.seq}{kind} round trip {fmt(r.rtt)} s")
    if args.show_transcripts:
        for plan, figs in zip(plans, per_session, strict=True):
            out.append(f"transcript session {plan.index}: {figs.transcript}")
    print("\n".join(out))
    return 0 if not errors else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:8001", help="a running server")
    p.add_argument(
        "--start-server",
        action="store_true",
        help="start `python -m isweep_backend` on a free port, measure it, stop it",
    )
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
