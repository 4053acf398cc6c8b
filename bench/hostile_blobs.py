"""Time one session's decoder on crafted hostile blobs (tests/hostile_audio.py), each case in
its own subprocess under a memory limit and a time limit, so an old decoder that would take
minutes or gigabytes shows as "timeout" or "out of memory" instead of taking the machine down.

    python -m bench.hostile_blobs                 # this checkout
    git archive OLD_COMMIT isweep_backend | tar -x -C OLD_DIR
    python -m bench.hostile_blobs --code OLD_DIR  # the package of another commit

Prints one `case size: seconds result` line per case; result is the decoded audio in
seconds or the `UndecodableAudio` kind. `--no-step-budget` lifts the parse-step budget, to
show how the parsing itself scales (linear since the resync fix, quadratic before).

`--queue` instead measures what a hostile session costs the others on a shared decode
executor: K sessions keep a 3 MiB resync storm queued while a healthy session decodes the
real Chrome blobs one at a time; it prints the healthy blobs' latency (queueing included)
for 1 and 4 decode threads.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import REPO

CASES = ("webm_resync_storm", "ogg_fake_page_storm", "webm_laced_opus_bomb", "flac_of_silence")
SIZES = (20_000, 40_000, 80_000, 3 << 20)


def build(case: str, size: int) -> bytes:
    from tests import hostile_audio

    if case == "flac_of_silence":
        # ~190 bytes a second of 8 kHz silence: `size` bytes of FLAC.
        return hostile_audio.flac_of_silence(size / 190)
    builder = getattr(hostile_audio, case)
    data: bytes = builder(size)
    return data


def audio_modules() -> tuple[Any, Any]:
    """The budget and decode modules of the package under test: in `audio/` since the
    package got its subpackage, at the top level in the commits before (`--code`)."""
    try:
        return (
            importlib.import_module("isweep_backend.audio.budget"),
            importlib.import_module("isweep_backend.audio.decode"),
        )
    except ModuleNotFoundError:
        return (
            importlib.import_module("isweep_backend.budget"),
            importlib.import_module("isweep_backend.decode"),
        )


def run_one(case: str, size: int, lift_step_budget: bool = False) -> None:
    """In the child: build the blob, decode it once as a session's first blob, print."""
    budget, decode = audio_modules()
    if lift_step_budget:
        budget.MAX_PARSE_STEPS_PER_BLOB = 1 << 40
    from isweep_backend.errors import UndecodableAudio

    blob = build(case, size)
    started = time.perf_counter()
    try:
        pcm = decode.SessionDecoder().decode(blob).pcm
        result = f"{pcm.size / decode.SAMPLE_RATE:.1f} s of audio"
    except UndecodableAudio as exc:
        result = f"refused ({exc.kind})"
    print(f"{time.perf_counter() - started:.3f} {result} [{len(blob)} bytes]")


def queue_latency(threads: int, hostile_sessions: int) -> tuple[float, float]:
    """(median, max) seconds from submitting a healthy blob to its PCM, while each hostile
    session has a crafted blob queued ahead of it."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from isweep_backend.audio.decode import SessionDecoder
    from isweep_backend.errors import UndecodableAudio
    from tests.audio_tools import FIXTURES
    from tests.hostile_audio import webm_resync_storm

    chrome = [(FIXTURES / "chrome" / f"seq{i:02d}.webm-part").read_bytes() for i in range(9)]
    storm = webm_resync_storm((3 << 20) - 4096)

    def hostile() -> None:
        # A fresh session each time: one session is cut off after a few such blobs.
        with contextlib.suppress(UndecodableAudio):
            SessionDecoder().decode(storm)

    latencies = []
    healthy = SessionDecoder()
    with ThreadPoolExecutor(threads) as executor:
        for blob in chrome:
            for _ in range(hostile_sessions):
                executor.submit(hostile)
            started = time.perf_counter()
            executor.submit(healthy.decode, blob).result()
            latencies.append(time.perf_counter() - started)
    return statistics.median(latencies), max(latencies)


def print_queue_latencies() -> None:
    """--queue: a healthy blob's latency behind 1, 4 and 8 hostile sessions, 1 and 4 threads."""
    for sessions in (1, 4, 8):
        for threads in (1, 4):
            median, worst = queue_latency(threads, sessions)
            print(
                f"hostile sessions {sessions}, decode threads {threads}: healthy blob "
                f"latency median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms",
                flush=True,
            )


def time_case(args: argparse.Namespace, case: str, size: int) -> str:
    """One case in a child process under the memory and time limits: its result line."""
    limit = int(args.memory_gib * (1 << 30))
    # The package under test first, then this checkout for bench and tests.hostile_audio.
    env = os.environ | {"PYTHONPATH": f"{args.code.resolve()}{os.pathsep}{REPO}"}

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    call = f"run_one({case!r}, {size}, {args.no_step_budget})"
    code = f"from bench.hostile_blobs import run_one; {call}"
    try:
        done = subprocess.run(
            # -P: the package comes from --code, not from the working directory.
            [sys.executable, "-P", "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.timeout,
            preexec_fn=limit_memory,
        )
    except subprocess.TimeoutExpired:
        return f"timeout (> {args.timeout:g} s)"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        verdict = "out of memory" if "MemoryError" in done.stderr else last[:120]
        return f"failed: {verdict}"
    return done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hostile_blobs", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--code", type=Path, default=REPO, help="a directory holding the isweep_backend to time"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--memory-gib", type=float, default=3.0, help="address-space limit")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--no-step-budget", action="store_true", help="lift the step budget")
    parser.add_argument("--queue", action="store_true", help="measure the decode queue")
    args = parser.parse_args()
    if args.queue:
        print_queue_latencies()
        return 0
    for case in args.cases:
        for size in SIZES:
            label = f"{case} {size // 1000 if size < 1 << 20 else size >> 20}"
            label += " KB" if size < 1 << 20 else " MiB"
            print(f"{label}: {time_case(args, case, size)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
