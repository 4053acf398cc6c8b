"""The service as a separate process: `python -m isweep_backend` on a free loopback port,
started from the repository root, polled until `/readyz` answers 200, stopped with SIGTERM.

Every benchmark that starts a server uses this module, and the tests may too: import it as
`from bench.service import free_port, wait_ready` from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from . import REPO

LOOPBACK = "127.0.0.1"
# What a benchmark wants from its server's output: warnings and worse, one JSON object a line.
BENCH_FLAGS = ("--log-level", "warning", "--log-format", "json")
POLL_SECONDS = 0.25
STOP_TIMEOUT_SECONDS = 25.0


class ServiceNotReady(RuntimeError):
    """The service exited, or did not answer `/readyz` with 200, before the timeout."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on at the moment of the call.

    Returns:
        The port number. Another process may take it before the caller binds it; on a test or
        benchmark machine that race is rare enough to ignore.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _check_alive(proc: subprocess.Popen[Any] | None, what: str) -> None:
    if proc is not None and proc.poll() is not None:
        raise ServiceNotReady(f"{what} exited with {proc.returncode} before ready")


def wait_ready(
    url: str, timeout_seconds: float = 180.0, proc: subprocess.Popen[Any] | None = None
) -> dict[str, Any]:
    """Block until `GET {url}/readyz` answers 200.

    Args:
        url: the service's base URL, e.g. `http://127.0.0.1:8001`.
        timeout_seconds: how long to keep polling (every 0.25 s).
        proc: the service's process, if this caller started it: its exit ends the wait.

    Returns:
        The `/readyz` answer (model, device, compute type, ...).

    Raises:
        ServiceNotReady: on timeout, or when `proc` exits first.
    """
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        _check_alive(proc, url)
        # Refused, reset, 503 (an HTTPError is an OSError), or not JSON yet: poll again.
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(f"{url}/readyz", timeout=POLL_SECONDS * 4) as resp,
        ):
            ready: dict[str, Any] = json.loads(resp.read())
            return ready
        time.sleep(POLL_SECONDS)
    raise ServiceNotReady(f"{url} not ready after {timeout_seconds:.0f} s")


async def wait_ready_async(
    http: aiohttp.ClientSession,
    url: str,
    timeout_seconds: float = 180.0,
    proc: subprocess.Popen[Any] | None = None,
) -> dict[str, Any]:
    """`wait_ready` for asyncio code, on the caller's `aiohttp` session (same arguments,
    answer and errors)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    while loop.time() < deadline:
        _check_alive(proc, url)
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(url + "/readyz") as resp:
                if resp.status == 200:
                    ready: dict[str, Any] = await resp.json()
                    return ready
        await asyncio.sleep(POLL_SECONDS)
    raise ServiceNotReady(f"{url} not ready after {timeout_seconds:.0f} s")


class Service:
    """`python -m isweep_backend` on a free loopback port, its output written to a log file.

    Attributes:
        port, url: where it listens (`http://127.0.0.1:<port>`).
        proc: the process (its pid is the root of the tree `bench.probes` reads).
        log_path: its stdout and stderr together.
    """

    def __init__(
        self,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        flags: Sequence[str] = BENCH_FLAGS,
    ) -> None:
        """Start it; it is not ready until `wait_ready` returns.

        Args:
            log_path: where its output goes (created or truncated).
            env: added to this process's environment (`ISWEEP_*` settings); the service
                inherits this process's environment either way.
            flags: command-line flags after `--port`; the default asks for JSON lines at
                warning and above.
        """
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isweep_backend", "--port", str(self.port), *flags],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )

    async def wait_ready(
        self, http: aiohttp.ClientSession, timeout_seconds: float = 180.0
    ) -> dict[str, Any]:
        """Wait until it answers `/readyz` with 200; returns that answer. Raises
        `ServiceNotReady` (naming the log) if it exits first or the time runs out."""
        try:
            return await wait_ready_async(http, self.url, timeout_seconds, self.proc)
        except ServiceNotReady as exc:
            raise ServiceNotReady(f"{exc}; log: {self.log_path}") from None

    def stop(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """Stop it as `stop_process` does, and close its log."""
        code = stop_process(self.proc, timeout_seconds)
        self._log.close()
        return code


def stop_process(
    proc: subprocess.Popen[Any], timeout_seconds: float = STOP_TIMEOUT_SECONDS
) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_seconds`.

    Returns:
        Its exit code, or None when it had to be killed.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """`--url` (a running service) and `--start-server` (the benchmark starts one on a free
    loopback port, measures it, and stops it)."""
    parser.add_argument("--url", default=f"http://{LOOPBACK}:8001", help="a running server")
    parser.add_argument(
        "--start-server",
        action="store_true",
        help="start `python -m isweep_backend` on a free loopback port, measure it, stop it",
    )
