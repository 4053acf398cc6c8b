"""The real service (`python -m isweep_backend`) replaying real speech while a real Prometheus
scrapes it and evaluates ops/alerts.yml: every query of the Grafana dashboard run through
Prometheus, the alert rules, the counters the replay moves, the service's JSON log lines, and
the Dockerfile's health check against the live service.

Prometheus comes from the Debian package `prometheus` (CI installs it); the tests fail rather
than skip without it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml

from bench.service import free_port, stop_process
from isweep_backend.logging import session_hash
from tests.audio_tools import cut_blobs, encode_opus_stream
from tests.conftest import chunk_body, load_synthetic
from tests.observability_tools import (
    JOB,
    OPS,
    ROOT,
    USER_ID,
    alert_rules,
    binary,
    dashboard_queries,
    healthcheck_command,
    scrape,
)

# Distinctive, like USER_ID, so finding it in a log line or in /metrics cannot be a coincidence.
TAB_ID = 918273645
MAX_REQUEST_BYTES = 262144
SESSION_TTL_SECONDS = 4.0
TRAILING_SILENCE_SECONDS = 3.0
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
T = TypeVar("T")


def http(
    method: str, url: str, body: bytes | None = None, timeout: float = 30.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call `check` until it returns something other than None or False, or fail."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, ValueError, KeyError) as exc:  # not up yet, or not scraped yet
            last_error = exc
            result = None
        if result is not None and result is not False:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error})")


@dataclass
class Stack:
    service: str
    prometheus: str
    port: int
    log_path: Path
    stderr_paths: list[Path]
    blobs_b64: list[str]
    stream_seconds: float
    retries: int
    words: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = http("GET", f"{self.service}/metrics")
        assert status == 200
        return scrape(body.decode())

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = http("GET", url)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def log_lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()


def post_chunk(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    status, raw = http("POST", f"{url}/asr/stream", json.dumps(body).encode())
    assert status == 200, raw
    segments: list[dict[str, Any]] = json.loads(raw)["segments"]
    return [w for s in segments for w in s["words"]]


def counter(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def prometheus_config(port: int) -> dict[str, Any]:
    """ops/prometheus.yml, scraping the test's service every second, with ops/alerts.yml."""
    config: dict[str, Any] = yaml.safe_load((OPS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(OPS / rule) for rule in config["rule_files"]]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == JOB)
    job.pop("dns_sd_configs", None)  # compose's replicas; here the one test service
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    config["scrape_configs"] = [job]
    return config


@contextlib.contextmanager
def running(command: list[str], log: Path, err: Path, env: dict[str, str]) -> Iterator[None]:
    with log.open("wb") as out, err.open("wb") as errors:
        proc = subprocess.Popen(command, stdout=out, stderr=errors, env=env, cwd=ROOT)
    try:
        yield
    finally:
        stop_process(proc, 30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = binary("prometheus")
    tmp = tmp_path_factory.mktemp("observability")
    port, prometheus_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISWEEP_")}
    env.update(
        ISWEEP_PORT=str(port),
        ISWEEP_SESSION_TTL_SECONDS=str(SESSION_TTL_SECONDS),
        ISWEEP_MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES),
        HF_HUB_OFFLINE="1",
    )
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(port)))
    service_cmd = [sys.executable, "-m", "isweep_backend", "--log-format", "json"]
    prometheus_cmd = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]
    service_url = f"http://127.0.0.1:{port}"
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    logs = tmp / "service.log"
    with (
        running(service_cmd, logs, tmp / "service.err", env),
        running(prometheus_cmd, tmp / "prometheus.log", tmp / "prometheus.err", env),
    ):
        poll(lambda: http("GET", f"{service_url}/readyz")[0] == 200, 180, "the service")
        poll(lambda: http("GET", f"{prometheus_url}/-/ready")[0] == 200, 60, "Prometheus")
        # Replay only once Prometheus has scraped the idle service: rates need a sample from
        # before the replay, and a fast replay can fit between two scrapes.
        poll(lambda: scraped_up(prometheus_url), 60, "Prometheus's first scrape")
        live = replay(service_url, prometheus_url, port, logs, [tmp / "service.err"])
        # The replay's session and the undecodable one go idle and are evicted after the TTL.
        poll(
            lambda: counter(live.metrics(), "isweep_sessions_evicted_total", reason="ttl") >= 2,
            60,
            "TTL eviction",
        )
        # Prometheus holds the final state once it has scraped after the evictions.
        poll(
            lambda: [
                s
                for s in live.query(f'isweep_sessions_evicted_total{{job="{JOB}",reason="ttl"}}')
                if float(s["value"][1]) >= 2
            ],
            60,
            "Prometheus to scrape the evictions",
        )
        yield live


def scraped_up(prometheus_url: str) -> bool:
    query = urllib.parse.urlencode({"query": f'up{{job="{JOB}"}} == 1'})
    status, body = http("GET", f"{prometheus_url}/api/v1/query?{query}")
    return status == 200 and bool(json.loads(body)["data"]["result"])


def replay(url: str, prometheus: str, port: int, logs: Path, stderr: list[Path]) -> Stack:
    speech = load_synthetic("pauses")
    silence = np.zeros(round(TRAILING_SILENCE_SECONDS * speech.rate), dtype=np.float32)
    pcm = np.concatenate([speech.pcm, silence])
    blobs = cut_blobs(encode_opus_stream(pcm, speech.rate), 1.0, seed=5)
    words: list[dict[str, Any]] = []
    tail = round(TRAILING_SILENCE_SECONDS)  # blobs of 1 s
    sent = time.monotonic()
    for seq, blob in enumerate(blobs):
        if seq >= len(blobs) - tail:
            # The capture goes on after the speech: its silence arrives a blob a second and
            # the last sentence's words ride on the answers. Nothing is sent after the last
            # blob (the extension never does).
            time.sleep(max(0.0, sent + 1.0 - time.monotonic()))
        sent = time.monotonic()
        body = chunk_body(blob, seq, user_id=USER_ID, tab_id=TAB_ID)
        words += post_chunk(url, body)
        if seq == 2:
            # A client retry (clients may retry, the extension does not today): a duplicate,
            # a no-op for the audio.
            words += post_chunk(url, body)
    retries = 1
    # One of each kind of trouble, so its series move: an undecodable blob (200), a body over
    # the limit (413, shed), a body that is not JSON (400), a route that does not exist (404).
    junk = chunk_body(b"\x00" * 800, 0, user_id=USER_ID, tab_id=TAB_ID + 1)
    assert post_chunk(url, junk) == []
    too_large = json.dumps(chunk_body(b"\x01" * MAX_REQUEST_BYTES, 0, user_id=USER_ID))
    assert http("POST", f"{url}/asr/stream", too_large.encode())[0] == 413
    assert http("POST", f"{url}/asr/stream", b"{not json")[0] == 400
    assert http("GET", f"{url}/no/such/route")[0] == 404
    return Stack(
        service=url,
        prometheus=prometheus,
        port=port,
        log_path=logs,
        stderr_paths=stderr,
        blobs_b64=[base64.b64encode(b).decode() for b in blobs],
        stream_seconds=pcm.size / speech.rate,
        retries=retries,
        words=words,
    )


@pytest.mark.slow
def test_the_replay_is_transcribed(stack: Stack) -> None:
    assert len(stack.words) >= 10


@pytest.mark.slow
def test_every_dashboard_query_parses_and_returns_a_series(stack: Stack) -> None:
    empty = [(title, expr) for title, expr in dashboard_queries() if not stack.query(expr)]
    assert not empty, empty


@pytest.mark.slow
def test_dashboard_shows_the_replay_in_its_key_panels(stack: Stack) -> None:
    def value(expr: str) -> float:
        return max(float(s["value"][1]) for s in stack.query(expr))

    lag = f'rate(isweep_word_emit_lag_seconds_bucket{{job="{JOB}"}}[1m])'
    p95 = value(f"histogram_quantile(0.95, sum by (le) ({lag}))")
    assert math.isfinite(p95) and 0 < p95 <= 10
    assert value(f'sum(rate(isweep_http_requests_total{{job="{JOB}"}}[1m]))') > 0
    assert value(f'sum(rate(isweep_passes_total{{job="{JOB}",outcome="ok"}}[1m]))') > 0
    assert value(f'up{{job="{JOB}"}}') == 1
    assert value(f'process_resident_memory_bytes{{job="{JOB}"}}') > 50 * 2**20


@pytest.mark.slow
def test_prometheus_evaluates_every_alert_rule_and_a_healthy_service_raises_none(
    stack: Stack,
) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        status, body = http("GET", f"{stack.prometheus}/api/v1/rules")
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        done = all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if status == 200 and done else None

    rules = poll(evaluated, 30, "Prometheus to evaluate the rules")
    assert len(rules) == len(alert_rules())
    healthy = {
        "IsweepBackendDown",
        "IsweepModelNotReady",
        "IsweepHighErrorRatio",
        "IsweepMemoryNearLimit",
    }
    for rule in rules:
        assert rule["health"] == "ok", rule
        if rule["name"] in healthy:
            assert rule["state"] == "inactive", rule
        # The replay's deliberate trouble may make others pending; none lasts long enough to fire.
        assert rule.get("state") != "firing", rule


@pytest.mark.slow
def test_decoded_audio_seconds_match_the_stream_duration(stack: Stack) -> None:
    decoded = counter(stack.metrics(), "isweep_decoded_audio_seconds_total")
    assert abs(decoded - stack.stream_seconds) <= 0.05 * stack.stream_seconds, decoded
    scraped = stack.query(f'isweep_decoded_audio_seconds_total{{job="{JOB}"}}')
    assert float(scraped[0]["value"][1]) == pytest.approx(decoded)


@pytest.mark.slow
def test_a_retried_blob_is_counted_as_a_duplicate_and_nothing_else(stack: Stack) -> None:
    samples = stack.metrics()
    assert counter(samples, "isweep_seq_events_total", event="duplicate") == stack.retries
    for event in ("early", "late", "gap", "restart"):
        assert counter(samples, "isweep_seq_events_total", event=event) == 0, event


@pytest.mark.slow
def test_idle_sessions_are_evicted_after_the_ttl_and_counted(stack: Stack) -> None:
    samples = stack.metrics()
    assert counter(samples, "isweep_sessions_started_total") == 2
    assert counter(samples, "isweep_sessions_evicted_total", reason="ttl") == 2
    assert counter(samples, "isweep_active_sessions") == 0
    assert counter(samples, "isweep_buffered_audio_seconds") == 0
    ended = [json.loads(line) for line in stack.log_lines() if '"session_ended"' in line]
    assert sorted(e["reason"] for e in ended) == ["ttl", "ttl"]


@pytest.mark.slow
def test_trouble_is_counted_by_kind_route_and_status_class(stack: Stack) -> None:
    samples = stack.metrics()
    assert counter(samples, "isweep_decode_errors_total", kind="no_stream_header") == 1
    assert counter(samples, "isweep_requests_shed_total", reason="too_large") == 1
    requests = "isweep_http_requests_total"
    assert counter(samples, requests, route="/asr/stream", status_class="4xx") == 2
    assert counter(samples, requests, route="unmatched", status_class="4xx") == 1
    assert counter(samples, requests, route="/asr/stream", status_class="2xx") == (
        len(stack.blobs_b64) + stack.retries + 1
    )


@pytest.mark.slow
def test_log_lines_are_json_with_the_documented_fields(stack: Stack) -> None:
    lines = [json.loads(line) for line in stack.log_lines()]
    events = {line["event"] for line in lines}
    assert {"starting", "model_loaded", "session_started", "chunk_answered"} <= events
    assert {"chunk_undecodable", "request_rejected", "session_ended"} <= events
    for line in lines:
        assert {"event", "level", "timestamp", "logger"} <= set(line), line
        assert line["level"] in ("debug", "info", "warning", "error", "critical"), line
        if "request_id" in line:
            assert HEX16.match(line["request_id"]), line
        if "session" in line:
            assert HEX16.match(line["session"]), line
    answered = [line for line in lines if line["event"] == "chunk_answered"]
    assert len(answered) == len(stack.blobs_b64) + stack.retries + 1
    for line in answered:
        assert {"request_id", "session", "seq", "arrival", "new_audio_seconds"} <= set(line)
    # The name is keyed per server process, so it is found, not computed: the speech
    # session's name is the same on every one of its lines, and no other session shares it.
    session, count = Counter(line["session"] for line in answered).most_common(1)[0]
    assert count == len(stack.blobs_b64) + stack.retries
    assert session != session_hash(USER_ID, TAB_ID)  # another process, another key
    request_ids = [line["request_id"] for line in answered]
    assert len(set(request_ids)) == len(request_ids)
    rejected = [line for line in lines if line["event"] == "request_rejected"]
    assert {line["code"] for line in rejected} == {"invalid_json", "request_too_large"}
    assert all("request_id" in line for line in rejected)


@pytest.mark.slow
def test_no_raw_id_or_audio_in_any_log_line_or_in_metrics(stack: Stack) -> None:
    logs = "\n".join(
        [*stack.log_lines(), *(p.read_text(errors="replace") for p in stack.stderr_paths)]
    )
    _, exposition = http("GET", f"{stack.service}/metrics")
    for text in (logs, exposition.decode()):
        assert USER_ID not in text
        assert str(TAB_ID) not in text and str(TAB_ID + 1) not in text
        assert not BASE64_RUN.search(text), BASE64_RUN.search(text)
        for blob in stack.blobs_b64:
            for start in (0, len(blob) // 2, len(blob) - 24):
                assert blob[start : start + 24] not in text


@pytest.mark.slow
def test_the_dockerfile_healthcheck_passes_on_a_live_service_and_fails_without_one(
    stack: Stack,
) -> None:
    command = [sys.executable, *healthcheck_command()[1:]]
    env = {**os.environ, "ISWEEP_PORT": str(stack.port)}
    assert subprocess.run(command, env=env, timeout=30).returncode == 0
    env["ISWEEP_PORT"] = str(free_port())
    assert subprocess.run(command, env=env, timeout=30, capture_output=True).returncode != 0
