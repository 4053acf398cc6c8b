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


@pytest.mark.slow
def test_sigterm_answers_the_request_in_flight_and_exits_promptly() -> None:
    import base64
    import threading

    from tests.audio_tools import wav_bytes
    from tests.conftest import load_synthetic

    port = _free_port()
    env = {**os.environ, "ISWEEP_PORT": str(port), "ISWEEP_RESPONSE_WAIT_SECONDS": "10"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "isweep_backend", "--log-format", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
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
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
    assert events.index("shutdown_started") < events.index("shutdown_complete")
