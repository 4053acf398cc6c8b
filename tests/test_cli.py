"""The README's way of running the service: `python -m isweep_backend`, offline, on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_module_starts_offline_reports_ready_and_stops_on_sigterm() -> None:
    port = _free_port()
    env = {**os.environ, "ISWEEP_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "isweep_backend", "--log-format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = None
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    ready = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.1)
        assert ready is not None and ready["model"] == "tiny.en"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
    assert "model_loaded" in events


def test_unknown_model_path_fails_fast_with_exit_code_2() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "isweep_backend",
            "--model",
            "./no/such/model",
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "model_not_found" in proc.stdout
