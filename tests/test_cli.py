"""The README's way of running the service: `python -m isweep_backend`, offline, on loopback."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from bench.service import free_port, wait_ready
from isweep_backend.settings import Settings, env_name
from tests.audio_tools import wav_bytes
from tests.conftest import load_synthetic

SERVICE = [sys.executable, "-m", "isweep_backend", "--log-format", "json"]
# What the `isweep-backend` console script runs (pyproject.toml [project.scripts]).
CONSOLE_SCRIPT = "import sys; from isweep_backend.__main__ import main; sys.exit(main())"


def start_service(**env: str) -> tuple[subprocess.Popen[str], str]:
    """The service as a newcomer starts it, on a free port; returns it and its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        SERVICE,
        env={**os.environ, "ISWEEP_PORT": str(port), "HF_HUB_OFFLINE": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def events_of(output: str) -> list[str]:
    return [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_module_starts_offline_reports_ready_and_stops_on_sigterm() -> None:
    proc, base = start_service()
    try:
        ready = wait_ready(base, 60, proc)
        assert ready["model"] == "tiny.en"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "model_loaded" in events_of(output)


def test_unknown_model_path_fails_fast_with_exit_code_2() -> None:
    proc = subprocess.run(
        [*SERVICE, "--model", "./no/such/model"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "model_not_found" in proc.stdout


class OutputReader:
    """Collects the service's stdout on a thread, so a test can wait for a log event."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stdout:
            self.lines.append(line)

    def wait_for(self, event: str, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if events_of("".join(self.lines)).count(event) >= count:
                return True
            time.sleep(0.05)
        return False

    def output(self) -> str:
        self._thread.join(30)
        return "".join(self.lines)


SESSIONS_IN_FLIGHT = 6


@pytest.mark.slow
def test_sigterm_answers_every_request_in_flight_and_exits_within_the_stop_bound() -> None:
    """Six sessions of 25 s of speech each, one pass worker, requests that would wait 30 s for
    their passes: on SIGTERM the pass in flight finishes, the queued ones are dropped, every
    request answers 200 and the process exits within Docker's 10 s stop grace (README: 8 s).
    Run one after another, the six passes alone take far longer than that."""
    proc, base = start_service(
        ISWEEP_RESPONSE_WAIT_SECONDS="30",
        ISWEEP_INFERENCE_WORKERS="1",
        ISWEEP_OVERLOAD_PASS_CYCLE_SECONDS="600",
    )
    reader = OutputReader(proc)
    speech = load_synthetic("long").pcm[: 25 * 16000]
    blob_b64 = base64.b64encode(wav_bytes(speech)).decode()
    answers: dict[int, int] = {}

    def send(tab: int) -> None:
        body = {
            "user_id": f"u{tab}",
            "tab_id": tab,
            "seq": 0,
            "mime_type": "audio/wav",
            "audio_b64": blob_b64,
        }
        request = urllib.request.Request(
            f"{base}/asr/stream",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            json.loads(resp.read())
            answers[tab] = resp.status

    try:
        wait_ready(base, 60, proc)
        senders = [threading.Thread(target=send, args=(t,)) for t in range(SESSIONS_IN_FLIGHT)]
        for sender in senders:
            sender.start()
        # Ordering, not a sleep: every request is in (its session exists) before the signal.
        assert reader.wait_for("session_started", SESSIONS_IN_FLIGHT, 60)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        exit_seconds = time.monotonic() - signalled
        for sender in senders:
            sender.join(30)
    finally:
        proc.kill()
    output = reader.output()
    assert proc.returncode == 0, output
    assert answers == dict.fromkeys(range(SESSIONS_IN_FLIGHT), 200)
    assert exit_seconds < 10.0
    events = events_of(output)
    assert events.index("shutdown_started") < events.index("shutdown_complete")


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-m", "isweep_backend"], [sys.executable, "-c", CONSOLE_SCRIPT]],
    ids=["python_-m", "console_script"],
)
def test_help_lists_every_setting_and_exits_0(command: list[str]) -> None:
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for f in dataclasses.fields(Settings):
        assert "--" + f.name.replace("_", "-") in proc.stdout
        assert env_name(f.name) in proc.stdout
    assert "below 70% of this" in " ".join(proc.stdout.split())  # a bare %, as written
