"""Writing a benchmark's report: plain `name: value` lines, right-aligned tables, numbers and
clock times formatted one way, and summaries of the server's log and code.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from . import REPO

LONG_LOG_LINE = 300  # characters of a log line shown


def fmt(value: float | None, digits: int = 3) -> str:
    """`value` with `digits` decimals; `n/a` for None and nan."""
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def clock(seconds: float) -> str:
    """Run time as m:ss (`-0:01` before the start)."""
    sign = "-" if seconds < 0 else ""
    s = round(abs(seconds))
    return f"{sign}{s // 60}:{s % 60:02d}"


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """The rows under the header, each column right-aligned to its widest cell, indented."""
    rows = list(rows)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    return [
        "  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def kinds_text(counter: Counter[str]) -> str:
    """`503:overloadedx3,conn:ClientOSErrorx1`, or `-` for none."""
    return ",".join(f"{k.replace(' ', ':')}x{n}" for k, n in sorted(counter.items())) or "-"


class Report:
    """The lines of a report, in order; `print()` writes them at once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, name: str, value: str) -> None:
        self.lines.append(f"{name}: {value}")

    def text(self, *lines: str) -> None:
        self.lines.extend(lines)

    def print(self) -> None:
        print("\n".join(self.lines))


def load_average() -> float:
    """The machine's 1-minute load average: other work on it skews every figure."""
    return os.getloadavg()[0]


def _shorten(line: str) -> str:
    return line if len(line) <= LONG_LOG_LINE else line[:LONG_LOG_LINE] + "..."


def server_log_problems(path: Path, limit: int = 8) -> tuple[int, list[str]]:
    """How many lines the server logged (at warning and above, as benchmarks start it), and
    the first `limit` of them."""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return len(lines), [_shorten(ln) for ln in lines[:limit]]


def log_events(path: Path, limit: int = 8) -> tuple[Counter[str], list[str]]:
    """The server's log lines (warning and above) by event, and the first `limit` that are
    not refusals of new sessions."""
    events: Counter[str] = Counter()
    shown: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            event = str(json.loads(line).get("event", "?"))
        except (ValueError, AttributeError):
            event = "(not json)"
        events[event] += 1
        if event != "session_refused" and len(shown) < limit:
            shown.append(_shorten(line))
    return events, shown


def git_state() -> str:
    """The commit checked out, and how many files under isweep_backend/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "isweep_backend"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "n/a"
    return head + (f" + uncommitted changes in {len(dirty)} file(s)" if dirty else "")
