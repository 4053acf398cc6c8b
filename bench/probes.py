"""Readings of a running server and of the machine: CPU time, memory and threads of a process
tree from /proc, busy time of every core from /proc/stat, and scrapes of /metrics.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# --- /proc ------------------------------------------------------------------------------------


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


def machine_busy_seconds() -> float | None:
    """Busy CPU time of every core of the machine: /proc/stat's first line minus idle and
    iowait (guest time is already counted in user)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    total = sum(fields[:8])
    return (total - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


# --- /metrics ---------------------------------------------------------------------------------


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
