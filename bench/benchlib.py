"""Helpers shared by the benchmarks in bench/ (replay.py, soak.py): the server they may start,
/proc and /metrics readings, the reference text, percentiles and number formatting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from isweep_backend.decode import SessionDecoder

from . import REPO

MIME = "audio/webm;codecs=opus"
SLOW_RTT_SECONDS = 0.5  # the extension's slow-round-trip threshold
_PUNCT = re.compile(r"[^\w\s]")


# --- the reference text and the blobs' place on the timeline --------------------------------


def load_reference(wav: Path, ref: Path | None) -> str | None:
    candidates = [ref] if ref is not None else [wav.with_suffix(".json"), wav.with_suffix(".txt")]
    for path in candidates:
        if path is None or not path.exists():
            continue
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return str(json.loads(raw)["text"])
        return raw.strip()
    return None


def blob_end_samples(blobs: list[bytes]) -> list[int]:
    """Where each blob ends on the session's audio timeline, decoded as the server decodes."""
    decoder = SessionDecoder()
    total = 0
    ends = []
    for blob in blobs:
        total += decoder.decode(blob).pcm.size
        ends.append(total)
    return ends


# --- the server, when a benchmark starts it -------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its children (live ones, and reaped ones)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the ")": state is field 3, so utime (14) .. cstime (17) sit at 11..14.
        total += sum(int(x) for x in fields[11:15]) / ticks
    return total


def proc_status_kb(pid: int, key: str) -> int:
    """A /proc/<pid>/status field (VmRSS, VmHWM, Threads, ...) summed over the process and
    its descendants."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            text = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total


class Server:
    def __init__(self, log_path: Path, env: dict[str, str] | None = None) -> None:
        """Start the service on a free loopback port; `env` (ISWEEP_* settings) is added to
        this process's environment, which the server inherits either way."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "isweep_backend",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--log-format",
                "json",
            ],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} before ready; log: {self.log_path}"
                )
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(self.url + "/readyz") as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            await asyncio.sleep(0.25)
        raise RuntimeError(f"server not ready after {timeout:.0f} s; log: {self.log_path}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._log.close()
                return None
        self._log.close()
        return self.proc.returncode


def server_log_problems(path: Path, limit: int = 8) -> tuple[int, list[str]]:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    shown = [ln if len(ln) <= 300 else ln[:300] + "..." for ln in lines[:limit]]
    return len(lines), shown


# --- /metrics -------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """One scrape of /metrics: every sample with its labels. Empty if /metrics failed."""

    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.samples)

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)

    def total(self, name: str) -> float:
        """The sample summed over its labels; 0 if absent."""
        return sum(v for n, _, v in self.samples if n == name)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, labels, v in self.samples:
            if n == name:
                key = labels.get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out

    def buckets(self, histogram: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of a histogram, summed over its other labels."""
        return sorted(
            (float(le), count) for le, count in self.by_label(histogram + "_bucket", "le").items()
        )

    def summed(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, _, value in self.samples:
            out[name] = out.get(name, 0.0) + value
        return out


async def scrape_snapshot(http: aiohttp.ClientSession, url: str) -> Snapshot:
    try:
        async with http.get(url + "/metrics") as resp:
            if resp.status != 200:
                return Snapshot()
            text = await resp.text()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return Snapshot()
    return Snapshot(
        [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    )


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Sample values summed over labels, by sample name; empty if /metrics is unavailable."""
    return (await scrape_snapshot(http, url)).summed()


def delta(end: dict[str, float], start: dict[str, float], name: str) -> float | None:
    """end - start; a labelled counter with no children yet has no sample, so it counts as 0."""
    if name not in end:
        return None
    return end[name] - start.get(name, 0.0)


# --- timing and figures ---------------------------------------------------------------------


async def sleep_until(loop: asyncio.AbstractEventLoop, at: float) -> float:
    """Sleep until loop time `at`; return how late we woke."""
    now = loop.time()
    if at > now:
        await asyncio.sleep(at - now)
    return max(0.0, loop.time() - at)


def normalise(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def words_of(segment: dict[str, Any]) -> list[tuple[str, float]]:
    """(text, end_seconds) per word; a segment without word timing counts as one word."""
    words = segment.get("words")
    if isinstance(words, list) and words:
        return [(str(w.get("word", "")), float(w["end_seconds"])) for w in words]
    return [(str(segment.get("text", "")), float(segment["end_seconds"]))]


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"
