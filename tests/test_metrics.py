"""The Prometheus metrics: names, labels and units by Prometheus's conventions, every label value
started at zero, and the memory limit the service reports."""

from __future__ import annotations

import os
from typing import get_args

from prometheus_client import generate_latest

from isweep_backend import metrics as metrics_module
from isweep_backend.metrics import Metrics
from isweep_backend.reorder import Arrival
from isweep_backend.session import SEQ_EVENT_OF
from tests.observability_tools import scrape


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


def test_every_value_of_every_labelled_counter_is_exposed_at_zero_before_any_event() -> None:
    """The values are `Literal` types that mypy checks at every call that counts one, so a
    value the code counts is one of these; here each of them is a series from the start."""
    m = Metrics()
    text = _exposition(m)
    labelled = {
        name: counter
        for name, counter in vars(m).items()
        if isinstance(counter, metrics_module.LabelledCounter)
    }
    assert set(labelled) >= {"passes", "decode_errors", "requests_shed", "seq_events"}
    exposed = scrape(text)
    for name, counter in labelled.items():
        series = {
            dict(labels)[counter.label]: value
            for (sample, labels), value in exposed.items()
            if sample == counter.name
        }
        assert series == dict.fromkeys(counter.values, 0.0), name


def test_every_out_of_order_arrival_is_counted_as_a_seq_event() -> None:
    assert set(SEQ_EVENT_OF) == {a for a in Arrival if a is not Arrival.IN_ORDER}
    assert set(SEQ_EVENT_OF.values()) <= set(get_args(metrics_module.SeqEvent))


def test_memory_limit_is_the_cgroup_limit_or_the_machine_ram() -> None:
    limit = metrics_module.memory_limit_bytes()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < limit <= ram
    assert scrape(_exposition(Metrics()))[("isweep_memory_limit_bytes", ())] == limit
