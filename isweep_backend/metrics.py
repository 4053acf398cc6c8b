"""Every Prometheus metric of the service, defined once, on a registry owned by the app.

Labels come only from small fixed sets: never a user id, tab id or any other unbounded value.
Every label value known here starts at zero, so rates and ratios exist before the first event.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Generic, Literal, TypeVar, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import DecodeErrorKind

# Bucket bounds, in the metric's unit, chosen around what each one measures on a CPU.
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A chunk request is answered within response_wait_seconds (0.4 s) of its arrival; the
# extension calls a round trip over 0.5 s slow, so 0.4, 0.45 and 0.5 are bounds.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
_PASS_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_LAG_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0)
_AUDIO_BUCKETS = (0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)

STATUS_CLASSES = ("2xx", "4xx", "5xx")
# The values of each labelled counter (see LabelledCounter).
PassOutcome = Literal["ok", "vad_skipped", "error"]
CommitRule = Literal["agreement", "stability", "end_of_speech", "deadline"]
HallucinationGuard = Literal["segment", "outside_speech", "end_of_speech"]
EvictionReason = Literal["ttl", "new_capture", "left_behind", "shutdown"]
SeqEvent = Literal["early", "duplicate", "late", "far_ahead", "gap", "restart"]
ShedReason = Literal[
    "too_large",
    "session_limit",
    "user_session_limit",
    "rate_limit",
    "session_start_rate",
    "overloaded",
    "buffer_limit",
]
Label = TypeVar("Label", bound=str)

# cgroup files that hold a container's memory limit (v2, then v1); "max" or a huge v1 value
# means no limit.
_CGROUP_MEMORY_LIMIT_FILES = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
_NO_LIMIT_BYTES = 2**60


def memory_limit_bytes() -> float:
    """The memory this process may use: its container's cgroup limit, else the machine's RAM."""
    physical = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for path in _CGROUP_MEMORY_LIMIT_FILES:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < _NO_LIMIT_BYTES:
            return min(float(raw), physical)
    return physical


class MemoryLimitCollector(Collector):
    """`isweep_memory_limit_bytes`, read at scrape time, to compare with the process's RSS."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "isweep_memory_limit_bytes",
            "Memory the process may use: the container (cgroup) limit, else physical RAM.",
            value=memory_limit_bytes(),
        )


class LabelledCounter(Generic[Label]):
    """A counter with one label whose values are the `Literal` type `Label`: mypy refuses a
    value outside it, and every value of it starts at zero."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        values: tuple[Label, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.counter = Counter(name, documentation, [label], registry=registry)
        self.name = name
        self.label = label
        self.values = values
        for value in values:
            self.counter.labels(value)

    def inc(self, value: Label, amount: float = 1.0) -> None:
        self.counter.labels(value).inc(amount)

    def labels(self, value: Label) -> Counter:
        """The series of one value (to read it)."""
        child: Counter = self.counter.labels(value)
        return child


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # `*_created` series double the series count and no dashboard or alert reads them.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the client
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        r.register(MemoryLimitCollector())
        # --- HTTP ---------------------------------------------------------------------------
        self.requests = Counter(
            "isweep_http_requests_total",
            "HTTP requests answered.",
            ["route", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "isweep_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        # --- pipeline -----------------------------------------------------------------------
        self.decode_duration = Histogram(
            "isweep_decode_duration_seconds",
            "Time to demux and decode one blob to PCM.",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.decoded_audio = Counter(
            "isweep_decoded_audio_seconds_total",
            "Audio decoded from blobs, gap fill included.",
            registry=r,
        )
        self.queue_wait = Histogram(
            "isweep_pass_queue_wait_seconds",
            "Time a session waited for its pass to start.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.pass_duration = Histogram(
            "isweep_pass_duration_seconds",
            "Time of one recognition pass (VAD + inference).",
            buckets=_PASS_BUCKETS,
            registry=r,
        )
        self.pass_audio = Histogram(
            "isweep_pass_audio_seconds",
            "Audio given to one recognition pass.",
            buckets=_AUDIO_BUCKETS,
            registry=r,
        )
        self.passes = LabelledCounter[PassOutcome](
            "isweep_passes_total",
            "Recognition passes by outcome.",
            "outcome",
            get_args(PassOutcome),
            r,
        )
        self.pass_workers = Gauge(
            "isweep_pass_workers",
            "Pass workers the service runs once the model is loaded.",
            registry=r,
        )
        self.pass_workers_alive = Gauge(
            "isweep_pass_workers_alive",
            "Pass workers running now; fewer than isweep_pass_workers means lost capacity.",
            registry=r,
        )
        self.pass_worker_restarts = Counter(
            "isweep_pass_worker_restarts_total",
            "Pass workers that ended on an error their guard could not handle, and were replaced.",
            registry=r,
        )
        self.real_time_factor = Histogram(
            "isweep_pass_real_time_factor",
            "Pass duration divided by the new audio it covered.",
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.word_emit_lag = Histogram(
            "isweep_word_emit_lag_seconds",
            "From the arrival of the audio that ends a word to the response carrying it.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.words_committed = LabelledCounter[CommitRule](
            "isweep_words_committed_total",
            "Words committed, by the rule that committed them.",
            "rule",
            get_args(CommitRule),
            r,
        )
        self.hallucination_drops = LabelledCounter[HallucinationGuard](
            "isweep_hallucination_drops_total",
            "Hypothesis parts dropped by a guard.",
            "guard",
            get_args(HallucinationGuard),
            r,
        )
        # --- sessions -----------------------------------------------------------------------
        self.active_sessions = Gauge(
            "isweep_active_sessions",
            "Sessions held now.",
            registry=r,
        )
        self.buffered_audio_seconds = Gauge(
            "isweep_buffered_audio_seconds",
            "PCM held in all session buffers.",
            registry=r,
        )
        self.buffered_audio_bytes = Gauge(
            "isweep_buffered_audio_bytes",
            "Bytes of PCM held in all session buffers.",
            registry=r,
        )
        self.sessions_started = Counter(
            "isweep_sessions_started_total",
            "Sessions created.",
            registry=r,
        )
        self.sessions_evicted = LabelledCounter[EvictionReason](
            "isweep_sessions_evicted_total",
            "Sessions removed, by reason.",
            "reason",
            get_args(EvictionReason),
            r,
        )
        self.seq_events = LabelledCounter[SeqEvent](
            "isweep_seq_events_total",
            "Blob ordering events: early (held, reordered), duplicate, late, far_ahead "
            "(beyond the hold window: dropped), gap (seqs skipped), restart (a new recorder "
            "stream).",
            "event",
            get_args(SeqEvent),
            r,
        )
        self.decode_errors = LabelledCounter[DecodeErrorKind](
            "isweep_decode_errors_total",
            "Blobs that yielded no audio, by kind.",
            "kind",
            get_args(DecodeErrorKind),
            r,
        )
        self.resynced_bytes = Counter(
            "isweep_resynced_bytes_total",
            "Stream bytes skipped to resynchronise.",
            registry=r,
        )
        self.overwritten_audio = Counter(
            "isweep_overwritten_audio_seconds_total",
            "Audio lost because a session buffer was full before its words were committed.",
            registry=r,
        )
        self.requests_shed = LabelledCounter[ShedReason](
            "isweep_requests_shed_total",
            "Requests refused to protect the service.",
            "reason",
            get_args(ShedReason),
            r,
        )
        # --- model --------------------------------------------------------------------------
        self.model_info = Info("isweep_model", "The loaded model.", registry=r)
        self.model_load_duration = Gauge(
            "isweep_model_load_duration_seconds",
            "Time the model took to load.",
            registry=r,
        )
        self.model_ready = Gauge(
            "isweep_model_ready",
            "1 once the model is loaded and warm.",
            registry=r,
        )

    def init_routes(self, routes: Iterable[str]) -> None:
        """Start each route's request series at zero, so error ratios exist before an error."""
        for route in routes:
            self.request_duration.labels(route)
            for status_class in STATUS_CLASSES:
                self.requests.labels(route, status_class)
