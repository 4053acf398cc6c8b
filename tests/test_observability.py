"""Operability with real parts: the real service (`python -m isweep_backend`) replaying real
speech, a real Prometheus scraping it and evaluating ops/alerts.yml, every query of the Grafana
dashboard run through Prometheus, promtool on the rules, and the service's JSON log lines.

Prometheus and promtool come from the Debian package `prometheus` (CI installs it); a test that
cannot find them fails rather than skips.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import fnmatch
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
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
import structlog
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from isweep_backend import metrics as metrics_module
from isweep_backend.logging import configure_logging, session_hash
from isweep_backend.metrics import Metrics
from isweep_backend.reorder import Arrival
from tests.audio_tools import cut_blobs, encode_opus_stream
from tests.conftest import chunk_body, load_synthetic

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "isweep_backend"
OPS = ROOT / "ops"
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "isweep-backend.json"
JOB = "isweep-backend"
INSTANCE_ALL = ".+"  # the dashboard's `instance` variable when "All" is chosen
# Distinctive values, so finding one in a log line or in /metrics cannot be a coincidence.
USER_ID = "user-7f3c9a51-observability"
TAB_ID = 918273645
MAX_REQUEST_BYTES = 262144
SESSION_TTL_SECONDS = 4.0
TRAILING_SILENCE_SECONDS = 3.0
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{64,}")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
T = TypeVar("T")


# --- helpers --------------------------------------------------------------------------------


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get update && apt-get install -y prometheus")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(sample name, sorted labels): value}."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard, rows' nested panels included,
    with the `instance` variable at its "All" value, as Grafana sends it to Prometheus."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"].replace("$instance", INSTANCE_ALL)
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((OPS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def logged_events() -> dict[str, set[str]]:
    """Every event name the package logs (`log.<level>("name", field=...)`), with its fields."""
    events: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                continue
            fields = {kw.arg for kw in node.keywords if kw.arg is not None}
            events.setdefault(node.args[0].value, set()).update(fields)
    return events


# --- configuration files, checked by the tools that load them -------------------------------


def run_promtool(*args: str) -> str:
    proc = subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_promtool_accepts_the_prometheus_config() -> None:
    run_promtool("check", "config", "ops/prometheus.yml")


def test_promtool_accepts_the_alert_rules() -> None:
    run_promtool("check", "rules", "ops/alerts.yml")


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    run_promtool("test", "rules", "ops/alerts.test.yml")


def test_every_alert_has_a_firing_and_a_quiet_case_in_its_unit_tests() -> None:
    tests = yaml.safe_load((OPS / "alerts.test.yml").read_text())["tests"]
    expected: dict[str, list[int]] = {}
    for case in tests:
        for check in case.get("alert_rule_test", []):
            expected.setdefault(check["alertname"], []).append(len(check["exp_alerts"]))
        # Each case has an instance that must not alert: "b" series exist and never fire.
        assert any('instance="b:8001"' in s["series"] for s in case["input_series"]), case
    alerts = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert set(expected) == alerts
    for name, counts in expected.items():
        assert any(counts), f"{name} never fires in its tests"


def test_dashboard_queries_use_the_provisioned_datasource_and_plain_ranges() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {d["uid"] for d in provisioned if d["type"] == "prometheus"}
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]
    queries = dashboard_queries()
    assert len(queries) >= 20
    for title, expr in queries:
        assert "$" not in expr, (title, expr)  # no Grafana variables: Prometheus runs them as-is
        assert f'job="{JOB}"' in expr, (title, expr)


def test_compose_wires_service_prometheus_and_grafana_with_files_that_exist() -> None:
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    services = compose["services"]
    assert {"isweep-backend", "prometheus", "grafana"} <= set(services)
    mounts: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (OPS / source).resolve().exists(), source
                mounts[(OPS / source).resolve().relative_to(ROOT).as_posix()] = target
    assert (OPS / services[JOB]["build"]["context"] / "Dockerfile").resolve().exists()
    # Prometheus loads its config and the rules it names from where compose mounts them.
    config_dir = Path(mounts["ops/prometheus.yml"]).parent
    for rule_file in yaml.safe_load((OPS / "prometheus.yml").read_text())["rule_files"]:
        assert mounts[f"ops/{rule_file}"] == (config_dir / rule_file).as_posix()
    # Prometheus scrapes the compose service on the port the image listens on.
    job = next(
        j
        for j in yaml.safe_load((OPS / "prometheus.yml").read_text())["scrape_configs"]
        if j["job_name"] == JOB
    )
    port = re.search(r"ISWEEP_PORT=(\d+)", (ROOT / "Dockerfile").read_text())
    assert port is not None
    # Every replica of the service, found by its DNS name (one address per container).
    assert services[JOB]["deploy"]["replicas"] >= 2
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == [JOB] and discovery["port"] == int(port.group(1))
    # Grafana finds the provisioning and the dashboards where compose mounts them.
    assert mounts["grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "isweep-backend.yml").read_text()
    )["providers"][0]
    assert mounts["grafana/dashboards"] == provider["options"]["path"]
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert urllib.parse.urlsplit(datasource["url"]).hostname in services


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [path, *(str(Path(path).parents[i]) for i in range(path.count("/")))]
        if any(fnmatch.fnmatch(c, pattern) for c in candidates):
            ignored = not negated
    return ignored


def test_dockerfile_runs_non_root_on_all_interfaces_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)", final_stage, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "ISWEEP_HOST=0.0.0.0" in final_stage
    assert re.search(r"^RUN pip install \.$", dockerfile, re.M)  # the README's install
    assert 'CMD ["python", "-m", "isweep_backend"]' in final_stage  # the README's run
    script = _healthcheck_command()[-1]
    assert "/healthz" in script and "urllib" in script
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        src
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M)
        for src in line.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _docker_ignored(source, patterns), source
    for left_out in (".venv", "tests/fixtures/long.wav", ".git"):
        assert _docker_ignored(left_out, patterns), left_out


def _healthcheck_command() -> list[str]:
    match = re.search(
        r"^HEALTHCHECK .*?CMD (\[.*?\])$", (ROOT / "Dockerfile").read_text(), re.M | re.S
    )
    assert match is not None
    command: list[str] = json.loads(match.group(1))
    return command


# --- metrics --------------------------------------------------------------------------------


def test_metric_names_and_labels_follow_prometheus_conventions() -> None:
    m = Metrics()
    m.init_routes(["/asr/stream"])
    forbidden = {"user_id", "tab_id", "session", "request_id", "seq", "user", "tab"}
    names = set()
    for family in m.registry.collect():
        if not family.name.startswith("isweep_"):
            continue
        names.add(family.name)
        if family.type == "counter":
            assert all(s.name == family.name + "_total" for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_factor")), family.name
        for sample in family.samples:
            assert not forbidden & set(sample.labels), sample
    for required in (
        "isweep_http_requests",
        "isweep_http_request_duration_seconds",
        "isweep_decode_duration_seconds",
        "isweep_pass_queue_wait_seconds",
        "isweep_pass_duration_seconds",
        "isweep_pass_audio_seconds",
        "isweep_word_emit_lag_seconds",
        "isweep_pass_real_time_factor",
        "isweep_active_sessions",
        "isweep_buffered_audio_seconds",
        "isweep_buffered_audio_bytes",
        "isweep_sessions_evicted",
        "isweep_seq_events",
        "isweep_decode_errors",
        "isweep_passes",
        "isweep_hallucination_drops",
        "isweep_requests_shed",
        "isweep_model",
        "isweep_model_load_duration_seconds",
        "isweep_memory_limit_bytes",
    ):
        assert required in names, required
    text = _exposition(m)
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    assert "_created" not in text


def _exposition(m: Metrics) -> str:
    return generate_latest(m.registry).decode()


def _literal_label_values() -> dict[str, set[str]]:
    """Label values the package passes as literals: `.<metric>.labels("x")`, the kinds of
    `UndecodableAudio("x", ...)`, the reasons of `_remove(session, "x")` and of refusals."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            first = node.args[0]
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "labels"
                and isinstance(func.value, ast.Attribute)
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.setdefault(func.value.attr, set()).add(first.value)
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name == "UndecodableAudio" and isinstance(first, ast.Constant):
                found.setdefault("decode_errors", set()).add(str(first.value))
            if name == "_remove" and len(node.args) > 1:
                reason = node.args[1]
                if isinstance(reason, ast.Constant):
                    found.setdefault("sessions_evicted", set()).add(str(reason.value))
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, ast.FunctionDef) and function.name == "_refusal":
                for ret in ast.walk(function):
                    if (
                        isinstance(ret, ast.Return)
                        and isinstance(ret.value, ast.Tuple)
                        and isinstance(ret.value.elts[0], ast.Constant)
                    ):
                        found.setdefault("requests_shed", set()).add(str(ret.value.elts[0].value))
    found.setdefault("seq_events", set()).update(
        a.value for a in Arrival if a is not Arrival.IN_ORDER
    )
    return found


def test_every_label_value_the_package_uses_starts_at_zero() -> None:
    m = Metrics()
    for metric, values in _literal_label_values().items():
        if metric == "requests":
            continue  # (route, status class): started per route by Metrics.init_routes
        started = {
            sample.labels[next(iter(sample.labels))]
            for family in getattr(m, metric).collect()
            for sample in family.samples
            if sample.labels
        }
        assert values <= started, (metric, values - started)


def test_memory_limit_is_the_cgroup_limit_or_the_machine_ram() -> None:
    limit = metrics_module.memory_limit_bytes()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < limit <= ram
    assert scrape(_exposition(Metrics()))[("isweep_memory_limit_bytes", ())] == limit


# --- logs -----------------------------------------------------------------------------------


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    structlog.contextvars.clear_contextvars()
    yield stream
    structlog.contextvars.clear_contextvars()
    configure_logging("warning", "json")  # as tests/conftest.py has it


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_exception_line_names_the_frames_but_holds_no_locals_ids_or_audio(
    log_stream: io.StringIO,
) -> None:
    audio_b64 = base64.b64encode(np.random.default_rng(1).bytes(300)).decode()

    def handler(body: bytes, user_id: str) -> None:
        raise ValueError(f"cannot use {audio_b64}")

    structlog.contextvars.bind_contextvars(request_id="0123456789abcdef")
    try:
        handler(json.dumps({"audio_b64": audio_b64, "user_id": USER_ID}).encode(), USER_ID)
    except ValueError:
        structlog.get_logger("isweep_backend.api").exception("request_failed")
    (line,) = _lines(log_stream)
    assert line["event"] == "request_failed" and line["level"] == "error"
    assert line["request_id"] == "0123456789abcdef"
    frames = line["exception"][0]["frames"]
    assert frames[-1]["name"] == "handler" and all("locals" not in f for f in frames)
    text = log_stream.getvalue()
    assert USER_ID not in text and audio_b64[:24] not in text


def test_a_raw_id_passed_by_mistake_is_redacted(log_stream: io.StringIO) -> None:
    structlog.get_logger("isweep_backend.api").info("chunk_answered", user_id=USER_ID, tab_id=7)
    (line,) = _lines(log_stream)
    assert line["user_id"] == line["tab_id"] == "[redacted]"


def test_other_libraries_records_are_json_lines_with_the_same_fields(
    log_stream: io.StringIO,
) -> None:
    structlog.contextvars.bind_contextvars(request_id="0123456789abcdef")
    logging.getLogger("aiohttp.server").error("Error handling request")
    logging.getLogger("faster_whisper").info("Processing audio with duration 00:01.000")
    (line,) = _lines(log_stream)
    assert line["event"] == "Error handling request"
    assert line["logger"] == "aiohttp.server" and line["level"] == "error"
    assert line["request_id"] == "0123456789abcdef" and "timestamp" in line


def test_console_format_is_for_people_and_json_is_forced_by_the_flag() -> None:
    stream = io.StringIO()
    try:
        configure_logging("info", "console", stream=stream)
        structlog.get_logger("isweep_backend").info("starting", port=8001)
        assert "starting" in stream.getvalue() and not stream.getvalue().startswith("{")
    finally:
        configure_logging("warning", "json")


# --- the README documents what the code logs and exposes -------------------------------------


def test_readme_documents_every_log_event_with_its_fields_and_every_metric() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {
        match.group(1): match.group(0)
        for match in re.finditer(r"^\| `([a-z_]+)` \|.*$", readme, re.M)
    }
    for event, fields in logged_events().items():
        assert event in rows, f"log event {event!r} is not in the README's event table"
        for name in fields:
            assert f"`{name}`" in rows[event], f"field {name!r} of {event!r} is not in README"
    m = Metrics()
    for family in m.registry.collect():
        if family.name.startswith("isweep_"):
            exposed = family.name + ("_total" if family.type == "counter" else "")
            exposed += "_info" if family.type == "info" else ""
            assert f"`{exposed}`" in readme, f"metric {exposed} is not in the README"


# --- the live stack: service + Prometheus ----------------------------------------------------


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
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


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
    command = [sys.executable, *_healthcheck_command()[1:]]
    env = {**os.environ, "ISWEEP_PORT": str(stack.port)}
    assert subprocess.run(command, env=env, timeout=30).returncode == 0
    env["ISWEEP_PORT"] = str(free_port())
    assert subprocess.run(command, env=env, timeout=30, capture_output=True).returncode != 0
