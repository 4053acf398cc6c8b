"""The honest real-time benchmark: replay real speech recorded by Chromium's MediaRecorder
(bench/corpus/) at the recorded pace, as the extension sends it, and score what it receives.

    python -m bench.realtime                          # tuning recordings, 1, 4 and 6 sessions
    python -m bench.realtime --sessions 1 --holdout   # the holdout recordings too
    python -m bench.realtime --model base --sessions 1,2
    python -m bench.realtime --set commit_deadline_seconds=2 --sessions 1
    python -m bench.realtime --curve --sessions 1     # latency-accuracy curve over policy knobs

Each blob is POSTed at its recorded arrival time without waiting for earlier answers; the
blob stop() flushed at a restart is not sent, and nothing is sent after the recording's last
blob. bench/README.md explains every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from . import corpus, scoring, textnorm
from .client import Chunk, b64, post_chunk, sleep_until
from .probes import proc_cpu_seconds, scrape
from .report import fmt, load_average, server_log_problems
from .service import Service
from .stats import pct

DEFAULT_CURVE = (
    "stable_after_seconds=0,0.3,0.5;"
    "stable_probability=0.6,0.8;"
    "agreement_probability=0,0.4;"
    "commit_deadline_seconds=2,3,4"
)
# The targets (tiny.en, int8, 2 cores): sessions -> (lag p50, lag p95, WER x, WER +).
TARGETS = {1: (1.5, 2.5, 1.15, 0.02), 4: (2.0, 3.0, 1.15, 0.02), 6: (None, None, 1.3, 0.03)}
# The lag floor: the stability rule's audio after a word, and a pass's typical answer time.
FLOOR_AFTER_SECONDS = 0.3
FLOOR_ANSWER_SECONDS = 0.2
STREAM_INTERVAL_SECONDS = (1.0, 2.0)  # start(1000), then start(2000) after a restart
CpuReader = Callable[[], Awaitable[float | None]]


@dataclass
class SessionRun:
    responses: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rtts: list[float] = field(default_factory=list)
    late_max: float = 0.0


@dataclass
class Point:
    """One recording replayed by N sessions at once."""

    recording: str
    sessions: int
    scores: list[scoring.Score]
    streamed_wers: list[float]
    offline_wer: float
    cpu_seconds: float | None
    audio_seconds: float
    failures: list[str]
    rtts: list[float]
    late_max: float


# --- sending ----------------------------------------------------------------------------------


async def replay_session(
    http: aiohttp.ClientSession,
    url: str,
    chunks: list[tuple[float, Chunk]],
    start_at: float,
) -> SessionRun:
    """POST each chunk at start_at + its arrival time, never awaiting an earlier answer."""
    loop = asyncio.get_running_loop()
    run = SessionRun()

    async def post(at: float, chunk: Chunk) -> None:
        run.late_max = max(run.late_max, await sleep_until(loop, start_at + at))
        answer = await post_chunk(http, url, chunk)
        if answer.status is None:
            run.failures.append(f"seq {chunk.seq}: {answer.exception!r}")
        elif not answer.ok:
            run.failures.append(f"seq {chunk.seq}: {answer.status} {answer.text()}")
        else:
            run.rtts.append(answer.rtt)
            run.responses.append((answer.received - start_at, answer.json()["segments"]))

    await asyncio.gather(*(post(at, chunk) for at, chunk in chunks))
    run.responses.sort(key=lambda r: r[0])  # the extension handles answers as they arrive
    return run


def request_chunks(rec: corpus.Recording, user_id: str, tab_id: int) -> list[tuple[float, Chunk]]:
    """What the extension sends for this recording: (arrival time, request) per sent blob."""
    return [
        (
            blob.at_seconds,
            Chunk(
                user_id,
                tab_id,
                blob.seq or 0,
                float(blob.seq or 0) * STREAM_INTERVAL_SECONDS[blob.stream],
                b64(blob.data),
            ),
        )
        for blob in rec.sent
    ]


async def run_point(
    http: aiohttp.ClientSession,
    url: str,
    rec: corpus.Recording,
    sessions: int,
    stagger: float,
    offline_wer: float,
    cpu: CpuReader,
    dump: Path | None = None,
) -> Point:
    tag = uuid.uuid4().hex[:6]
    plans = [request_chunks(rec, f"rt-{tag}-{i}", i + 1) for i in range(sessions)]
    loop = asyncio.get_running_loop()
    base = loop.time() + 0.2
    cpu_start = await cpu()
    runs = await asyncio.gather(
        *(replay_session(http, url, plans[i], base + i * stagger) for i in range(sessions))
    )
    cpu_end = await cpu()
    scores, wers = score_runs(rec, sessions, runs, dump)
    return Point(
        recording=rec.name,
        sessions=sessions,
        scores=scores,
        streamed_wers=wers,
        offline_wer=offline_wer,
        cpu_seconds=None if cpu_start is None or cpu_end is None else cpu_end - cpu_start,
        audio_seconds=sessions * float(rec.index["reference"]["session_seconds"]),
        failures=[f for r in runs for f in r.failures],
        rtts=[x for r in runs for x in r.rtts],
        late_max=max(r.late_max for r in runs),
    )


def score_runs(
    rec: corpus.Recording, sessions: int, runs: list[SessionRun], dump: Path | None
) -> tuple[list[scoring.Score], list[float]]:
    """Each session's score and streamed WER; with `dump`, its answers are saved there first
    (`--rescore` reads them back)."""
    ref = scoring.reference_tokens(
        [(w.text, w.session_end_seconds, w.audio_end_seconds, w.sent) for w in rec.words]
    )
    scores, wers = [], []
    for k, run in enumerate(runs):
        if dump is not None:
            dump.mkdir(parents=True, exist_ok=True)
            (dump / f"{rec.name}-{sessions}-{k}.json").write_text(
                json.dumps({"responses": run.responses, "failures": run.failures}, indent=1)
            )
        kept, dropped = scoring.extension_keeps(run.responses)
        result = scoring.score(ref, kept, dropped)
        scores.append(result)
        wers.append(textnorm.wer(rec.text, result.streamed_text))
    return scores, wers


def rescore(dump: Path, model: str) -> list[Point]:
    """Points from a --dump folder's saved answers, scored again (no CPU figure)."""
    grouped: dict[tuple[str, int], list[SessionRun]] = {}
    for path in sorted(dump.glob("*.json")):
        name, count, _ = path.stem.rsplit("-", 2)
        saved = json.loads(path.read_text())
        run = SessionRun(responses=[(float(at), segs) for at, segs in saved["responses"]])
        run.failures = saved["failures"]
        grouped.setdefault((name, int(count)), []).append(run)
    recordings = {name: corpus.load(name) for name, _ in grouped}
    offline = offline_wers(list(recordings.values()), model)
    points = []
    for (name, sessions), runs in grouped.items():
        scores, wers = score_runs(recordings[name], sessions, runs, None)
        points.append(
            Point(
                name,
                sessions,
                scores,
                wers,
                offline[name],
                None,
                0.0,
                [f for r in runs for f in r.failures],
                [],
                0.0,
            )
        )
    return points


# --- the offline figure -----------------------------------------------------------------------


def offline_wers(recordings: list[corpus.Recording], model: str) -> dict[str, float]:
    """The same model's offline WER on the audio as sent: stored for tiny.en, else computed here
    (before the server starts, so it costs the run nothing)."""
    if model == "tiny.en":
        return {r.name: float(r.offline["sent_wer"]) for r in recordings}
    from . import corpus_reference  # the model, only when it is needed

    whisper = corpus_reference.load_model(model)
    out = {}
    for rec in recordings:
        pcm, _ = corpus_reference.session_audio(rec)
        text, _ = corpus_reference.transcribe(whisper, pcm, words=False)
        out[rec.name] = textnorm.wer(rec.text, text)
    return out


# --- the figures ------------------------------------------------------------------------------


def summary(points: list[Point]) -> dict[str, Any]:
    """Figures pooled over the points' sessions (one recording, or all of one session count)."""
    scores = [s for p in points for s in p.scores]
    lags = [x for s in scores for x in s.lags]
    reference = sum(s.reference for s in scores)
    cpu = [p.cpu_seconds for p in points]
    known_cpu = None if any(c is None for c in cpu) else sum(c for c in cpu if c is not None)
    streamed = [w for p in points for w in p.streamed_wers]
    offline = [p.offline_wer for p in points for _ in p.scores]
    return {
        "reference_words": reference,
        "lag_p50": pct(lags, 0.5),
        "lag_p95": pct(lags, 0.95),
        "lag_max": max(lags) if lags else float("nan"),
        "streamed_wer": sum(streamed) / len(streamed) if streamed else float("nan"),
        "streamed_wer_max": max(streamed) if streamed else float("nan"),
        "offline_wer": sum(offline) / len(offline) if offline else float("nan"),
        "wer_excess_max": max(
            (w - o for w, o in zip(streamed, offline, strict=True)), default=float("nan")
        ),
        "lost": sum(len(s.lost) for s in scores),
        "lost_fraction": sum(len(s.lost) for s in scores) / reference if reference else 0.0,
        "invented": sum(len(s.invented) for s in scores),
        "twice": sum(len(s.twice) for s in scores),
        "substituted": sum(s.substituted for s in scores),
        "dropped_by_client": sum(s.dropped_by_client for s in scores),
        "cpu_per_audio_second": None
        if known_cpu is None
        else known_cpu / sum(p.audio_seconds for p in points),
        "failures": sum(len(p.failures) for p in points),
        "rtt_p95": pct([x for p in points for x in p.rtts], 0.95),
        "late_send_max": max(p.late_max for p in points),
    }


HEADER = (
    f"{'recording':<16} {'N':>2} {'words':>5}  {'lag p50':>7} {'p95':>5} {'max':>5}  "
    f"{'sWER':>5} {'oWER':>5} {'sWERmax':>7}  {'lost':>4} {'inv':>3} {'twice':>5} "
    f"{'subst':>5} {'cdrop':>5}  {'cpu/s':>5} {'rtt95':>5} {'fail':>4}"
)


def row(label: str, sessions: int, s: dict[str, Any]) -> str:
    f = fmt
    return (
        f"{label:<16} {sessions:>2} {s['reference_words']:>5}  {f(s['lag_p50'], 2):>7} "
        f"{f(s['lag_p95'], 2):>5} {f(s['lag_max'], 2):>5}  {f(s['streamed_wer']):>5} "
        f"{f(s['offline_wer']):>5} {f(s['streamed_wer_max']):>7}  {s['lost']:>4} "
        f"{s['invented']:>3} {s['twice']:>5} {s['substituted']:>5} {s['dropped_by_client']:>5}  "
        f"{f(s['cpu_per_audio_second'], 2):>5} {f(s['rtt_p95'], 2):>5} {s['failures']:>4}"
    )


def target_check(sessions: int, points: list[Point]) -> str:
    """The issue's bounds for this session count: each one PASS or FAIL (tiny.en only)."""
    if sessions not in TARGETS:
        return ""
    p50, p95, times, plus = TARGETS[sessions]
    s = summary(points)
    checks = []
    if p50 is not None and p95 is not None:
        checks += [f"p50<={p50}: {s['lag_p50'] <= p50}", f"p95<={p95}: {s['lag_p95'] <= p95}"]
    wer_ok = all(w <= times * p.offline_wer + plus for p in points for w in p.streamed_wers)
    checks.append(f"every sWER<={times}x oWER+{plus}: {wer_ok}")
    checks.append(f"lost<=1%: {s['lost_fraction'] <= 0.01}")
    if sessions == 1:
        checks.append(f"invented=0: {s['invented'] == 0}")
    return f"targets {sessions} session(s): " + ", ".join(checks)


def show(tokens: list[scoring.Token]) -> str:
    return " ".join(f"{t.text}@{t.end_seconds:.1f}" for t in tokens)


def details(point: Point) -> list[str]:
    out = []
    for k, s in enumerate(point.scores):
        if s.lost or s.invented or s.twice:
            out.append(
                f"  {point.recording} session {k}: lost [{show(s.lost)}] "
                f"invented [{show(s.invented)}] twice [{show(s.twice)}]"
            )
    out += [f"  {point.recording}: {f}" for f in point.failures[:5]]
    return out


# --- a run: one server, every recording at every session count -------------------------------


@contextlib.asynccontextmanager
async def service(
    args: argparse.Namespace, http: aiohttp.ClientSession, env: dict[str, str], announce: bool
) -> AsyncIterator[tuple[str, CpuReader]]:
    """A server to replay against, and how to read its CPU time: a fresh one per run (an
    earlier run's load must not carry over: its overload state, its sessions), or --url's."""
    if args.url:
        url = args.url.rstrip("/")

        async def metrics_cpu() -> float | None:
            return (await scrape(http, url)).get("process_cpu_seconds_total")

        yield url, metrics_cpu
        return
    log = Path(tempfile.mkstemp(prefix="isweep-realtime-", suffix=".log")[1])
    server = Service(log, env={"ISWEEP_MODEL": args.model, **env})
    pid = server.proc.pid

    async def proc_cpu() -> float | None:
        return proc_cpu_seconds(pid)

    try:
        ready = await server.wait_ready(http, 180)
        if announce:
            print(
                f"server: model {ready.get('model')} ({ready.get('model_source')}), "
                f"{ready.get('device')} {ready.get('compute_type')}; {env or 'defaults'}",
                flush=True,
            )
        yield server.url, proc_cpu
    finally:
        server.stop()
        report_server_log(log, args.verbose)


def report_server_log(log: Path, verbose: bool) -> None:
    """Show the server's warnings (with --verbose), then delete its log."""
    count, shown = server_log_problems(log)
    if count and verbose:
        print(f"server log: {count} lines at warning and above", *shown, sep="\n  ")
    log.unlink(missing_ok=True)


async def run_all(
    args: argparse.Namespace, recordings: list[corpus.Recording], env: dict[str, str]
) -> list[Point]:
    offline = offline_wers(recordings, args.model)
    points: list[Point] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for sessions in args.sessions:
            for rec in recordings:
                announce = not args.quiet and not points
                async with service(args, http, env, announce) as (url, cpu):
                    stagger = args.stagger if args.stagger is not None else 1.0 / sessions
                    point = await run_point(
                        http, url, rec, sessions, stagger, offline[rec.name], cpu, args.dump
                    )
                points.append(point)
                if not args.quiet:
                    print(row(rec.name, sessions, summary([point])), flush=True)
                    if args.verbose:
                        print("\n".join(details(point)), flush=True)
                if args.url:
                    await asyncio.sleep(args.settle_seconds)
    return points


def lag_floor(rec: corpus.Recording, after: float = FLOOR_AFTER_SECONDS) -> list[float]:
    """Each word's lag had it been committed by the first pass with `after` seconds of audio
    past it, answered FLOOR_ANSWER_SECONDS after that blob arrived: what the blob cadence alone
    costs, whatever the policy."""
    lags = []
    for word in rec.words:
        if not word.sent or not word.tokens:
            continue
        ready = word.audio_end_seconds + after
        blob = next((b for b in rec.sent if b.at_seconds >= ready), None)
        if blob is not None:
            lags.append(blob.at_seconds + FLOOR_ANSWER_SECONDS - word.audio_end_seconds)
    return lags


def print_floor(points: list[Point]) -> None:
    f = fmt
    names = list(dict.fromkeys(p.recording for p in points))
    pooled: list[float] = []
    print(
        f"lag floor (every word committed by the first pass with {FLOOR_AFTER_SECONDS} s of audio "
        f"after it, answered {FLOOR_ANSWER_SECONDS} s after its blob), p50 / p95:"
    )
    for name in names:
        lags = lag_floor(corpus.load(name))
        pooled += lags
        print(f"  {name:<16} {f(pct(lags, 0.5), 2)} / {f(pct(lags, 0.95), 2)}")
    if len(names) > 1:
        print(f"  {'ALL':<16} {f(pct(pooled, 0.5), 2)} / {f(pct(pooled, 0.95), 2)}")


def print_table(args: argparse.Namespace, points: list[Point]) -> None:
    print(HEADER)
    for sessions in args.sessions:
        mine = [p for p in points if p.sessions == sessions]
        for p in mine:
            print(row(p.recording, sessions, summary([p])))
        print(row("ALL", sessions, summary(mine)))
        if args.model == "tiny.en":
            print(target_check(sessions, mine))
    print_floor(points)


def parse_settings(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key or not value:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        env["ISWEEP_" + key.upper()] = value
    return env


def parse_curve(spec: str) -> list[tuple[str, list[str]]]:
    knobs = []
    for part in filter(None, spec.split(";")):
        key, _, values = part.partition("=")
        knobs.append((key.strip(), [v.strip() for v in values.split(",") if v.strip()]))
    return knobs


async def curve(
    args: argparse.Namespace, recordings: list[corpus.Recording]
) -> list[dict[str, Any]]:
    """One knob at a time, the others at their defaults (or --set): pooled figures per value."""
    base_env = parse_settings(args.set)
    args.quiet = not args.verbose  # one line per knob value, unless asked for more
    rows = []
    print(f"{'knob':<28} {'value':>6} " + HEADER[17:])
    for knob, values in parse_curve(args.curve):
        for value in values:
            env = {**base_env, "ISWEEP_" + knob.upper(): value}
            points = await run_all(args, recordings, env)
            for sessions in args.sessions:
                s = summary([p for p in points if p.sessions == sessions])
                print(f"{knob:<28} {value:>6} " + row("", sessions, s)[17:], flush=True)
                rows.append({"knob": knob, "value": value, "sessions": sessions, **s})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.realtime", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sessions", default="1,4,6", help="session counts, e.g. 1,4,6")
    parser.add_argument("--recordings", nargs="*", default=None, help="names in bench/corpus/")
    parser.add_argument("--holdout", action="store_true", help="include the holdout recordings")
    parser.add_argument("--model", default="tiny.en", help="tiny.en (default) or base")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server setting (ISWEEP_KEY=VALUE), repeatable",
    )
    parser.add_argument(
        "--curve",
        nargs="?",
        const=DEFAULT_CURVE,
        default=None,
        help=f"knob=v1,v2;knob2=... (default: {DEFAULT_CURVE})",
    )
    parser.add_argument("--url", help="use a running server instead of starting one")
    parser.add_argument(
        "--stagger", type=float, default=None, help="seconds between session starts (default 1/N)"
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=3.0,
        help="pause between runs so the last passes end",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--verbose", action="store_true", help="list lost/invented/twice words")
    parser.add_argument("--dump", type=Path, help="write every response, per session, here")
    parser.add_argument(
        "--rescore", type=Path, metavar="DIR", help="score a --dump folder again instead of running"
    )
    parser.add_argument("--quiet", action="store_true", help="only the final table")
    args = parser.parse_args(argv)
    args.sessions = [int(x) for x in args.sessions.split(",")]
    return args


def print_rescored(args: argparse.Namespace) -> None:
    """--rescore: the table of a --dump folder's answers, scored again."""
    points = rescore(args.rescore, args.model)
    args.sessions = sorted({p.sessions for p in points})
    if args.verbose:
        print("\n".join(line for p in points for line in details(p)))
    print_table(args, points)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Replay the selected recordings (once per curve value with --curve), print the table
    and return every figure, for --json."""
    recordings = corpus.select(args.recordings, args.holdout)
    if args.url and (args.curve or args.set or args.model != "tiny.en"):
        raise SystemExit("--curve, --set and --model start their own server: drop --url")
    print(
        f"recordings: {', '.join(r.name + (' (holdout)' if r.holdout else '') for r in recordings)}"
        f"; model {args.model}; settings {args.set or 'defaults'}; "
        f"load average {load_average():.2f}"
    )
    if args.curve:
        return {"curve": asyncio.run(curve(args, recordings))}
    points = asyncio.run(run_all(args, recordings, parse_settings(args.set)))
    print_table(args, points)
    return {
        "points": [
            {"recording": p.recording, "sessions": p.sessions, **summary([p])} for p in points
        ]
    }


def main() -> None:
    args = parse_args()
    if args.rescore:
        print_rescored(args)
        return
    out = measure(args)
    print(f"load average at the end {load_average():.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
