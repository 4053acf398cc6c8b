"""The Prometheus metrics: names, labels and units by Prometheus's conventions, every label value
started at zero, and the memory limit the service reports."""

from __future__ import annotations

import ast
import os

from prometheus_client import generate_latest

from isweep_backend import metrics as metrics_module
from isweep_backend.metrics import Metrics
from isweep_backend.reorder import Arrival
from tests.observability_tools import PACKAGE, scrape


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
