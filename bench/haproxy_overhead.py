"""What HAProxy adds to a chunk's round trip: the same request sent to one replica straight and
through ops/haproxy/haproxy.cfg, alternately, so the machine's noise falls on both alike.

    python -m bench.haproxy_overhead --requests 400

The request is the extension's: a real Chrome blob (tests/fixtures/chrome, ~22 KB of JSON)
re-sent with a seq the session already has, so the replica adds no audio and runs no pass and
the difference of the two round trips is HAProxy's (buffering the body, reading the ids with
json_query, hashing, one more loopback hop). Both clients keep their connections alive, as
the browser does. Prints plain `name: value` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from . import REPO
from .client import Chunk, b64, post_chunk
from .probes import proc_cpu_seconds
from .report import fmt
from .service import Service, free_port, wait_ready_async
from .stats import pct

HAPROXY_DIR = REPO / "ops" / "haproxy"
CHROME = REPO / "tests" / "fixtures" / "chrome"


def chunk(seq: int, blob: bytes) -> bytes:
    """The request body, encoded once: only the round trip is timed."""
    return Chunk("bench-haproxy", 1, seq, float(seq), b64(blob)).body()


def start_haproxy(replica_port: int, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if haproxy is None:
        raise SystemExit("haproxy is not installed (Debian: apt-get install haproxy)")
    servers = subprocess.run(
        [str(HAPROXY_DIR / "servers.sh"), f"127.0.0.1:{replica_port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (workdir / "servers.cfg").write_text(servers)
    env = {
        **os.environ,
        "ISWEEP_HAPROXY_BIND": f"127.0.0.1:{port}",
        "ISWEEP_HAPROXY_METRICS_BIND": f"127.0.0.1:{free_port()}",
        "ISWEEP_HAPROXY_SOCKET": str(workdir / "haproxy.sock"),
    }
    command = [haproxy, "-W", "-db", "-f", str(HAPROXY_DIR / "haproxy.cfg")]
    command += ["-f", str(workdir / "servers.cfg")]
    with (workdir / "haproxy.log").open("wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


async def post(http: aiohttp.ClientSession, url: str, body: bytes) -> float:
    """One round trip, in seconds."""
    answer = await post_chunk(http, url, body, clock=time.perf_counter)
    if not answer.ok:
        raise RuntimeError(f"{url} answered {answer.status or repr(answer.exception)}")
    return answer.rtt


async def measure(args: argparse.Namespace, workdir: Path) -> None:
    blobs = [(CHROME / f"seq{i:02d}.webm-part").read_bytes() for i in range(2)]
    # One session, back to back, both ways: far over the per-session rate a browser sends.
    os.environ["ISWEEP_MAX_REQUESTS_PER_SECOND"] = "100000"
    server = Service(workdir / "server.log")
    port = free_port()
    haproxy = start_haproxy(server.port, port, workdir)
    balancer = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as direct, aiohttp.ClientSession() as proxied:
            await server.wait_ready(direct, 120)
            await wait_ready_async(proxied, balancer, 30)  # HAProxy's health check has seen it
            for seq, blob in enumerate(blobs):
                await post(direct, server.url, chunk(seq, blob))
            body = chunk(1, blobs[1])  # a duplicate from now on: no audio, no pass
            for _ in range(args.warmup):
                await post(direct, server.url, body)
                await post(proxied, balancer, body)
            cpu_before = proc_cpu_seconds(haproxy.pid)
            straight, through = [], []
            for _ in range(args.requests):
                straight.append(await post(direct, server.url, body))
                through.append(await post(proxied, balancer, body))
            haproxy_cpu = proc_cpu_seconds(haproxy.pid) - cpu_before
    finally:
        haproxy.send_signal(signal.SIGTERM)
        haproxy.wait(timeout=10)
        server.stop()
    ms = 1000.0
    print(f"requests each way: {args.requests}")
    print(f"body bytes: {len(body)}")
    for name, times in (("direct", straight), ("through haproxy", through)):
        print(
            f"{name} round trip ms p50 / p95 / max: {fmt(pct(times, 0.5) * ms, 2)} / "
            f"{fmt(pct(times, 0.95) * ms, 2)} / {fmt(max(times) * ms, 2)}"
        )
    added = [(b - a) * ms for a, b in zip(straight, through, strict=True)]
    p50, p95 = fmt(pct(added, 0.5), 2), fmt(pct(added, 0.95), 2)
    print(f"haproxy adds ms p50 / p95 (paired): {p50} / {p95}")
    print(f"haproxy cpu ms per request: {fmt(haproxy_cpu / args.requests * ms, 3)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.haproxy_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=400, help="measured requests each way")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests each way")
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="isweep-haproxy-bench.") as tmp:
        asyncio.run(measure(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
