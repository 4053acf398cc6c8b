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
from typing import Any

import pytest

from isweep_backend.settings import Settings, env_name
from tests.audio_tools import wav_bytes
from tests.conftest import load_synthetic
from tests.live_server import free_port

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


def wait_ready(base: str) -> dict[str, Any] | None:
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as resp:
                ready: dict[str, Any] = json.loads(resp.read())
                return ready
        except OSError:
            time.sleep(0.1)
    return None


def events_of(output: str) -> list[str]:
    return [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_module_starts_offline_reports_ready_and_stops_on_sigterm() -> None:
    proc, base = start_service()
    try:
        ready = wait_ready(base)
        assert ready is not None and ready["model"] == "tiny.en"
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


@pytest.mark.slow
def test_sigterm_answers_the_request_in_flight_and_exits_promptly() -> None:
    proc, base = start_service(ISWEEP_RESPONSE_WAIT_SECONDS="10")
    speech = load_synthetic("long").pcm[: 20 * 16000]
    body = json.dumps(
        {
            "user_id": "u",
            "tab_id": 1,
            "seq": 0,
            "mime_type": "audio/wav",
            "audio_b64": base64.b64encode(wav_bytes(speech)).decode(),
        }
    ).encode()
    answer: dict[str, object] = {}

    def send() -> None:
        request = urllib.request.Request(
            f"{base}/asr/stream", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer["status"] = resp.status
            answer["body"] = json.loads(resp.read())

    try:
        assert wait_ready(base) is not None
        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.5)  # the request is in, its pass is running
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        exit_seconds = time.monotonic() - signalled
        sender.join(30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert exit_seconds < 20
    assert answer.get("status") == 200
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
