"""Every setting of the service, in one frozen dataclass, read from CLI flags and ISWEEP_* env.

Defaults live here and nowhere else. A flag beats its environment variable, which beats the
default; `python -m isweep_backend --help` prints the whole table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Device = Literal["auto", "cpu", "cuda"]
LogFormat = Literal["auto", "json", "console"]
ENV_PREFIX = "ISWEEP_"


@dataclass(frozen=True)
class Settings:
    # --- server -----------------------------------------------------------------------------
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind"})
    port: int = field(default=8001, metadata={"help": "TCP port"})
    max_request_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata={"help": "largest accepted request body; larger answers 413"},
    )
    auth_token: str = field(
        default="",
        repr=False,
        metadata={
            "help": "if set, every route but /healthz needs 'Authorization: Bearer "
            "<token>' (401 otherwise)",
            "secret": True,
        },
    )
    metrics_require_token: bool = field(
        default=False, metadata={"help": "also require the token on /metrics"}
    )
    instance: str = field(
        default="",
        metadata={
            "help": "this replica's name, in /readyz, every log line and the X-Isweep-Instance "
            "header, so a load balancer's affinity can be checked; default: host name:port"
        },
    )
    cors_origins: str = field(
        default="chrome-extension://*",
        metadata={
            "help": "comma-separated origins allowed to call the API from a browser; "
            "a trailing * matches any suffix; other origins get 403"
        },
    )
    trusted_proxies: str = field(
        default="",
        metadata={
            "help": "comma-separated addresses of reverse proxies in front of the service; "
            "for a request from one of them the client address is the last "
            "X-Forwarded-For entry (the one that proxy appended)"
        },
    )
    # --- model ------------------------------------------------------------------------------
    model: str = field(
        default="tiny.en",
        metadata={
            "help": "tiny.en (bundled), base (bundled, multilingual), a model folder, "
            "or any faster-whisper name (downloaded by faster-whisper)"
        },
    )
    device: Device = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    compute_type: str = field(
        default="auto",
        metadata={"help": "CTranslate2 compute type; auto = int8 on CPU, float16 on CUDA"},
    )
    language: str = field(
        default="auto",
        metadata={
            "help": "language code to force, or auto (English for .en models, "
            "otherwise detected once per session)"
        },
    )
    cpu_threads: int = field(
        default=0, metadata={"help": "CTranslate2 threads per pass; 0 = cores / workers"}
    )
    inference_workers: int = field(
        default=0,
        metadata={
            "help": "recognition passes that may run at the same time; 0 = one per "
            "core, at most 4 (on 2 cores, two 1-thread passes beat one 2-thread pass)"
        },
    )
    beam_size: int = field(
        default=0,
        metadata={
            "help": "decoder beam size; 0 = 5 on a GPU (there it costs no lag and fewer "
            "words are lost), 1 (greedy) on a CPU, where it would double a pass"
        },
    )
    encoder_window_seconds: float = field(
        default=10.0,
        metadata={
            "help": "audio window the encoder sees, 10 to 30 s; Whisper's own is 30, "
            "shorter is faster (padding is cut, never audio)"
        },
    )
    model_cache_dir: str = field(
        default="",
        metadata={
            "help": "where split bundled models are joined and verified model digests "
            "recorded; default: the user cache"
        },
    )
    # --- sessions and buffers -----------------------------------------------------------------
    buffer_seconds: float = field(
        default=30.0, metadata={"help": "PCM kept per session (ring buffer capacity)"}
    )
    session_ttl_seconds: float = field(
        default=60.0, metadata={"help": "an idle session is evicted after this long"}
    )
    max_sessions: int = field(
        default=64, metadata={"help": "live sessions; a new one beyond this answers 503"}
    )
    max_sessions_per_user: int = field(
        default=8, metadata={"help": "live sessions of one user_id; beyond this answers 429"}
    )
    max_requests_per_second: float = field(
        default=10.0,
        metadata={"help": "per-session request rate (bursts of twice this); beyond answers 429"},
    )
    new_sessions_per_minute_per_client: float = field(
        default=30.0,
        metadata={
            "help": "sessions one client address (an IPv6 /64) may start a minute, in "
            "bursts of as many; beyond answers 429; 0 = no per-address limit"
        },
    )
    new_sessions_per_minute_per_token: float = field(
        default=300.0,
        metadata={
            "help": "sessions all callers of the token (or, without a token, all callers) "
            "may start a minute, in bursts of as many; beyond answers 429; 0 = no limit"
        },
    )
    max_buffered_audio_seconds: float = field(
        default=1800.0,
        metadata={"help": "audio buffered over all sessions beyond which new sessions get 503"},
    )
    overload_pass_cycle_seconds: float = field(
        default=1.5,
        metadata={
            "help": "mean time from queueing a pass to its end beyond which new sessions "
            "are shed (503) until it falls below 70% of this; existing sessions get "
            "fewer, longer passes"
        },
    )
    reorder_wait_seconds: float = field(
        default=2.0,
        metadata={
            "help": "how long an early blob is held, from its arrival, before the missing "
            "seqs before it are skipped"
        },
    )
    max_held_blobs: int = field(
        default=16,
        metadata={
            "help": "out-of-order blobs held per session while waiting; also the hold "
            "window: a blob more than this many seqs past the newest one received is dropped"
        },
    )
    # --- streaming policy ---------------------------------------------------------------------
    response_wait_seconds: float = field(
        default=0.4,
        metadata={
            "help": "time from a request's arrival to its answer, spent waiting for the "
            "pass that covers its audio; under the extension's 500 ms slow threshold"
        },
    )
    min_pass_audio_seconds: float = field(
        default=0.5, metadata={"help": "new audio needed before another pass is scheduled"}
    )
    stable_after_seconds: float = field(
        default=0.3,
        metadata={
            "help": "a word heard with at least stable_probability and this much audio "
            "after it is committed at first sight, without a second pass; 0 = off"
        },
    )
    stable_probability: float = field(default=0.6, metadata={"help": "see stable_after_seconds"})
    agreement_probability: float = field(
        default=0.4,
        metadata={
            "help": "at a speech onset (after silence, or a session's first words), a word "
            "two passes agree on is committed only if heard with at least this probability"
        },
    )
    commit_deadline_seconds: float = field(
        default=3.0,
        metadata={"help": "a word this far behind the newest audio is committed unconfirmed"},
    )
    trim_seconds: float = field(
        default=5.0,
        metadata={
            "help": "buffered audio beyond which the buffer is cut in a pause behind "
            "the committed words"
        },
    )
    vad_threshold: float = field(default=0.5, metadata={"help": "Silero VAD speech threshold"})
    end_of_speech_seconds: float = field(
        default=0.6, metadata={"help": "silence after speech that flushes pending words"}
    )
    no_speech_threshold: float = field(
        default=0.6, metadata={"help": "drop a segment Whisper thinks is not speech"}
    )
    log_prob_threshold: float = field(
        default=-1.0, metadata={"help": "…when its mean log-probability is below this"}
    )
    compression_ratio_threshold: float = field(
        default=2.4, metadata={"help": "drop a segment whose text compresses more (loops)"}
    )
    # --- logging ------------------------------------------------------------------------------
    log_level: str = field(default="info", metadata={"help": "debug, info, warning, error"})
    log_format: LogFormat = field(
        default="auto", metadata={"help": "json, console, or auto (console on a terminal)"}
    )

    def __post_init__(self) -> None:
        problems = _validation_problems(self)
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))


MAX_AUTO_WORKERS = 4


def parallelism(settings: Settings, cores: int | None = None) -> tuple[int, int]:
    """(passes at once, CTranslate2 threads per pass), with 0s resolved from the core count."""
    cores = cores or os.cpu_count() or 1
    workers = settings.inference_workers or min(cores, MAX_AUTO_WORKERS)
    threads = settings.cpu_threads or max(1, cores // workers)
    return workers, threads


def instance_name(settings: Settings) -> str:
    """The replica's name: the `instance` setting, or host name:port (unique per machine)."""
    return settings.instance or f"{socket.gethostname()}:{settings.port}"


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _validation_problems(s: Settings) -> list[str]:
    problems = [
        f"{f.name} must be a finite number"
        for f in dataclasses.fields(s)
        if isinstance(getattr(s, f.name), float) and not math.isfinite(getattr(s, f.name))
    ]
    if not 0 < s.port < 65536:
        problems.append(f"port {s.port} is not a TCP port")
    if s.device not in get_args(Device):
        problems.append(f"device must be one of {get_args(Device)}")
    if s.log_format not in get_args(LogFormat):
        problems.append(f"log_format must be one of {get_args(LogFormat)}")
    positive = (
        "max_request_bytes",
        "max_sessions_per_user",
        "max_requests_per_second",
        "max_buffered_audio_seconds",
        "overload_pass_cycle_seconds",
        "buffer_seconds",
        "session_ttl_seconds",
        "max_sessions",
        "max_held_blobs",
        "min_pass_audio_seconds",
        "commit_deadline_seconds",
        "trim_seconds",
        "end_of_speech_seconds",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            problems.append(f"{name} must be > 0")
    for name in (
        "reorder_wait_seconds",
        "response_wait_seconds",
        "stable_after_seconds",
        "stable_probability",
        "agreement_probability",
        "new_sessions_per_minute_per_client",
        "new_sessions_per_minute_per_token",
        "cpu_threads",
        "inference_workers",
        "beam_size",
    ):
        if getattr(s, name) < 0:
            problems.append(f"{name} must be >= 0")
    if not 10.0 <= s.encoder_window_seconds <= 30.0:
        problems.append("encoder_window_seconds must be from 10 to 30")
    if s.trim_seconds + s.commit_deadline_seconds > s.buffer_seconds:
        problems.append("buffer_seconds must hold trim_seconds + commit_deadline_seconds")
    return problems


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean (true/false)")


_FIELD_TYPES: dict[str, Callable[[str], Any]] = {
    f.name: parse_bool if isinstance(f.default, bool) else type(f.default)
    for f in dataclasses.fields(Settings)
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isweep-backend",
        description="Real-time speech-to-text for the ISweep extension. Every flag can also be "
        "set with the environment variable shown in brackets.",
    )
    for f in dataclasses.fields(Settings):
        kind = _FIELD_TYPES[f.name]
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=argparse.SUPPRESS,
            # argparse %-formats help strings: a bare % in a text ("70% of this") breaks it.
            help=(
                f"{f.metadata.get('help', '')} [{env_name(f.name)}]"
                + ("" if f.metadata.get("secret") else f" (default: {f.default!r})")
            ).replace("%", "%%"),
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from defaults, then ISWEEP_* variables, then flags."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = environ.get(env_name(f.name))
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = _FIELD_TYPES[f.name](raw)
        except ValueError as exc:
            raise ValueError(f"{env_name(f.name)}={raw!r}: {exc}") from exc
    flags = build_parser().parse_args(argv)
    values.update(vars(flags))
    return Settings(**values)
