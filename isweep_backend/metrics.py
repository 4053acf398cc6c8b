"""Every Prometheus metric of the service, defined once, on a registry owned by the app.

Labels come only from small fixed sets: never a user id, tab id or any other unbounded value.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_PASS_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_LAG_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0)
_AUDIO_BUCKETS = (0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
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
            buckets=_PASS_BUCKETS,
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
            buckets=_PASS_BUCKETS,
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
        self.passes = Counter(
            "isweep_passes_total",
            "Recognition passes by outcome.",
            ["outcome"],
            registry=r,
        )
        self.real_time_factor = Histogram(
            "isweep_pass_real_time_factor",
            "Pass duration divided by the new audio it covered.",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0),
            registry=r,
        )
        self.word_emit_lag = Histogram(
            "isweep_word_emit_lag_seconds",
            "From the arrival of the audio that ends a word to the response carrying it.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.words_committed = Counter(
            "isweep_words_committed_total",
            "Words committed, by the rule that committed them.",
            ["rule"],
            registry=r,
        )
        self.hallucination_drops = Counter(
            "isweep_hallucination_drops_total",
            "Hypothesis parts dropped by a guard.",
            ["guard"],
            registry=r,
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
        self.sessions_evicted = Counter(
            "isweep_sessions_evicted_total",
            "Sessions removed, by reason.",
            ["reason"],
            registry=r,
        )
        self.seq_events = Counter(
            "isweep_seq_events_total",
            "Blob ordering events: reordered, duplicate, late, gap (seqs skipped), restart.",
            ["event"],
            registry=r,
        )
        self.decode_errors = Counter(
            "isweep_decode_errors_total",
            "Blobs that yielded no audio, by kind.",
            ["kind"],
            registry=r,
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
        self.requests_shed = Counter(
            "isweep_requests_shed_total",
            "Requests refused to protect the service.",
            ["reason"],
            registry=r,
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
