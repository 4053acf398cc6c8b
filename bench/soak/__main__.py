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
import sys
import time
import uuid
from pathlib import Path

import aiohttp

from .. import REPO
from ..service import add_service_arguments
from .capture import build_capture, make_plans
from .metrics import soak_figures
from .report import Soak, exit_status, report
from .runner import soak


async def main_async(args: argparse.Namespace) -> int:
    prefix = args.user_prefix
    if prefix is None:
        prefix = "soak-" if args.start_server else f"soak-{uuid.uuid4().hex[:6]}-"
    prep_started = time.monotonic()
    capture = build_capture(args.wav, args.ref, args.minutes)
    plans = make_plans(args, capture, prefix)
    prep_seconds = time.monotonic() - prep_started
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        result = await soak(http, args, plans)
    figures = soak_figures(plans, result, args.minutes)
    run = Soak(args, capture, plans, prep_seconds, result, figures)
    report(run).print()
    return exit_status(run)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_service_arguments(p)
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
