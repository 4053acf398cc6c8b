"""Writing a benchmark's report: plain `name: value` lines, right-aligned tables, numbers and
clock times formatted one way, and a summary of the server's log.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

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
