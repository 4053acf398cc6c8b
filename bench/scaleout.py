"""Sessions held at the latency target through HAProxy with 1, 2 and 3 replicas on one machine.

    python -m bench.scaleout                                  # 1, 2, 3 replicas
    python -m bench.scaleout --replicas 1 2 --start-sessions 1 --step 1 --target-p95 3

For each replica count it starts `ops/haproxy/run-local.sh REPLICAS PORT` (the replicas and
HAProxy, as an operator would on one machine), waits until HAProxy's health checks see every
replica UP, then runs `python -m bench.realtime --url <HAProxy>`: N sessions replay a real speech
recording made by Chromium's MediaRecorder (--recording, default `continuous`, 78 s of
reading without long pauses) at its recorded pace, as the extension sends it. N goes up by
--step from --start-sessions (for the next replica count, from the last count's figure, up
or down) until a run misses the target. The target: word lag p95 (from a word's end in the
audio to the answer carrying it) at most --target-p95 s, every answer 200, no segment the
extension would drop for going back in time. "Sessions held" is the largest N that met it.
Sessions are spread by HAProxy's hash of their ids, as real ones are, so with few sessions
the replicas' shares are uneven.

On a machine with C cores, replicas do not add cores: they share them, so the figure for R
replicas says what HAProxy and R processes cost on those C cores, not what R machines hold.
Sessions per core is the 1-replica figure over C. Every ISWEEP_* variable reaches every
replica. Prints the ladder as it goes, then a table of plain `name: value` lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import REPO
from .service import free_port

RUN_LOCAL = REPO / "ops" / "haproxy" / "run-local.sh"
REALTIME = [sys.executable, "-m", "bench.realtime"]


@dataclass
class Run:
    replicas: int
    sessions: int
    p50: float  # nan when no word was carried
    p95: float
    errors: int
    backwards: int
    load: str

    def met(self, target_p95: float) -> bool:
        return self.p95 <= target_p95 and self.errors == 0 and self.backwards == 0


def servers_up(metrics_url: str) -> int:
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    pattern = r'haproxy_server_status\{proxy="replicas",server="[^"]+",state="UP"\} 1'
    return len(re.findall(pattern, text))


def start_cluster(
    replicas: int, port: int, metrics_port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHON": sys.executable}
    env["ISWEEP_HAPROXY_METRICS_BIND"] = f"127.0.0.1:{metrics_port}"
    env.setdefault("ISWEEP_LOG_LEVEL", "warning")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(RUN_LOCAL), str(replicas), str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"run-local.sh exited with {proc.returncode}; log: {log}")
        with contextlib.suppress(OSError, ValueError):
            if servers_up(f"http://127.0.0.1:{metrics_port}/metrics") == replicas:
                return proc
        time.sleep(1)
    stop_cluster(proc)
    raise RuntimeError(f"HAProxy did not see {replicas} replicas UP in 300 s; log: {log}")


def stop_cluster(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def replay(url: str, sessions: int, recording: str, replicas: int) -> Run:
    """One run of the real-time benchmark through HAProxy."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.json"
        command = [*REALTIME, "--url", url, "--sessions", str(sessions)]
        command += ["--recordings", recording, "--quiet", "--json", str(figures)]
        started = os.getloadavg()[0]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if not figures.exists():
            raise RuntimeError(f"bench.realtime failed:\n{result.stdout}\n{result.stderr}")
        (point,) = json.loads(figures.read_text())["points"]
    return Run(
        replicas,
        sessions,
        point["lag_p50"],
        point["lag_p95"],
        point["failures"],
        point["dropped_by_client"],
        f"{started:.2f} / {os.getloadavg()[0]:.2f}",
    )


def last(held: dict[int, Run | None]) -> int | None:
    """Sessions held at the replica count measured last, if it held any."""
    runs = list(held.values())
    return runs[-1].sessions if runs and runs[-1] is not None else None


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.scaleout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--recording", default="continuous", help="a name in bench/corpus/")
    p.add_argument(
        "--target-p95",
        type=float,
        default=4.0,
        help="word lag p95, s (default 4: the 1-session figure of the tuning set, rounded up)",
    )
    p.add_argument("--start-sessions", type=int, default=2)
    p.add_argument("--step", type=int, default=2, help="sessions added or removed per run")
    p.add_argument("--max-sessions", type=int, default=12)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    log = Path(tempfile.mkdtemp(prefix="isweep-scaleout-")) / "run-local.log"
    print(f"cores: {cores}")
    print(f"target: word lag p95 <= {args.target_p95:g} s, all 200, none dropped as backwards")
    print(f"run-local log: {log}")
    held: dict[int, Run | None] = {}
    for replicas in args.replicas:
        port, metrics_port = free_port(), free_port()
        cluster = start_cluster(replicas, port, metrics_port, log)
        best: Run | None = None
        try:
            # From the previous count's figure: up while the target is met, else down.
            sessions = max(1, last(held) or args.start_sessions)
            step = 0
            while 1 <= sessions <= args.max_sessions:
                run = replay(f"http://127.0.0.1:{port}", sessions, args.recording, replicas)
                ok = run.met(args.target_p95)
                print(
                    f"replicas {replicas} sessions {sessions}: p50 {run.p50:.2f} s "
                    f"p95 {run.p95:.2f} s "
                    f"errors {run.errors} backwards {run.backwards} load {run.load} "
                    f"-> {'met' if ok else 'missed'}",
                    flush=True,
                )
                step = step or (args.step if ok else -args.step)
                if ok:
                    best = run
                if ok != (step > 0):
                    break  # went up and missed, or went down and met
                sessions += step
        finally:
            stop_cluster(cluster)
        held[replicas] = best
    for replicas, best in held.items():
        count = best.sessions if best else 0
        print(f"sessions held with {replicas} replicas on {cores} cores: {count}")
        print(f"sessions held per core with {replicas} replicas: {count / cores:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
