"""The session registry: (user_id, tab_id) -> Session, the cap on sessions, and TTL eviction."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import time
from collections.abc import Callable

import structlog

from .audio.decode import starts_stream
from .errors import IsweepError, Overloaded, RateLimited, SessionLimit
from .metrics import EvictionReason, ShedReason
from .ratelimit import Caller, SessionStartLimiter
from .schema import Chunk
from .session import Outcome, Session, SessionContext, SessionKey
from .timeline import to_seconds

log = structlog.get_logger("isweep_backend.registry")
# Blobs are sent a second apart, so a late seq 0 is overtaken by one or two blobs at most: a new
# session's first blob past this seq, with no header, joins a capture already under way.
MAX_SEQ_BEFORE_A_LATE_SEQ0 = 2
# A live capture sends a blob every 1 or 2 s. A session that heard nothing for this long and
# then gets a blob past the ones it lacks was left behind: the capture went on at another
# replica (a failover, or a scale-up and back) or its blobs were lost. What it holds (audio,
# pending words) is from before what the client has since been sent, so it is replaced by a
# session that joins the capture where it is now.
STALE_SESSION_SECONDS = 5.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to do
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def return_freed_memory() -> None:
    """Hand memory freed by evicted sessions back to the OS.

    FFmpeg's codec and resampler state is allocated on the decode thread's malloc arena;
    glibc keeps freed arena memory for reuse, so without this RSS would stay at its peak
    after a crowd of sessions leaves."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def left_behind(session: Session, seq: int, now: float) -> bool:
    """Whether blob `seq` comes after the capture went on without `session` (see
    STALE_SESSION_SECONDS)."""
    return seq > session.reorder.next_seq and now - session.last_seen >= STALE_SESSION_SECONDS


class SessionRegistry:
    def __init__(
        self,
        context: SessionContext,
        default_language: str | None,
        overloaded: Callable[[], bool],
    ) -> None:
        settings = context.settings
        self._context = context
        self._settings = settings
        self._metrics = context.metrics
        self._default_language = default_language
        self._overloaded = overloaded
        self._sessions: dict[SessionKey, Session] = {}
        self._per_user: dict[str, int] = {}
        self._session_starts = SessionStartLimiter(
            settings.new_sessions_per_minute_per_client,
            settings.new_sessions_per_minute_per_token,
        )
        self._evicted_last_round = False
        self._evictor: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: SessionKey) -> Session | None:
        return self._sessions.get(key)

    async def accept(
        self, chunk: Chunk, answer_by: float, caller: Caller, arrived_at: float | None = None
    ) -> Outcome:
        key = (chunk.user_id, chunk.tab_id)
        session = self._sessions.get(key)
        new_capture = session is not None and session.is_new_capture(chunk.seq, chunk.audio)
        if session is None or new_capture:
            # Before a new capture replaces a session: churn must not get past the limit.
            self._limit_session_starts(caller)
        if session is not None and new_capture:
            # A new capture replaces its tab's session one for one: it adds no session, no
            # load and no buffered audio, so the capacity checks that shed new sessions do not
            # apply, and the tab never loses its session to a refusal.
            self._remove(session, "new_capture")
            session = self._create(key, chunk, replacing=True)
            self._session_starts.charge(caller, time.monotonic())
        elif session is None:
            session = self._create(key, chunk)
            self._session_starts.charge(caller, time.monotonic())
        elif left_behind(session, chunk.seq, time.monotonic()):
            # One for one, like a new capture: no session, load or audio is added.
            self._remove(session, "left_behind")
            session = self._create(key, chunk, replacing=True)
        elif not session.rate_limit.take(time.monotonic()):
            self._metrics.requests_shed.inc("rate_limit")
            raise RateLimited(
                "rate_limited",
                "this session sends faster than "
                f"{self._settings.max_requests_per_second:g} requests a second",
            )
        return await session.accept(
            chunk.seq, chunk.audio, answer_by, chunk.chunk_start_seconds, arrived_at
        )

    def _limit_session_starts(self, caller: Caller) -> None:
        limit, wait = self._session_starts.wait_seconds(caller, time.monotonic())
        if wait <= 0:
            return
        self._metrics.requests_shed.inc("session_start_rate")
        log.warning("session_refused", reason="session_start_rate", limit=limit)
        per_minute = (
            self._settings.new_sessions_per_minute_per_client
            if limit == "client"
            else self._settings.new_sessions_per_minute_per_token
        )
        raise RateLimited(
            "session_start_rate_limited",
            f"new sessions are limited to {per_minute:g} a minute per {limit}",
            retry_after_seconds=wait,
        )

    def _admit(self, user_id: str) -> None:
        """Refuse a new session, fast, if the service or this user cannot take one more."""
        refusal = self._refusal(user_id)
        if refusal is not None:
            reason, error = refusal
            self._metrics.requests_shed.inc(reason)
            log.warning("session_refused", reason=reason)
            raise error

    def _refusal(self, user_id: str) -> tuple[ShedReason, IsweepError] | None:
        s = self._settings
        if len(self._sessions) >= s.max_sessions:
            return "session_limit", SessionLimit(
                f"the service holds its maximum of {s.max_sessions} sessions"
            )
        if self._per_user.get(user_id, 0) >= s.max_sessions_per_user:
            return "user_session_limit", RateLimited(
                "too_many_sessions",
                f"this user_id holds its maximum of {s.max_sessions_per_user} sessions",
            )
        if self._overloaded():
            return "overloaded", Overloaded(
                "recognition is behind; new sessions are refused until it catches up"
            )
        if self.buffered_seconds() > s.max_buffered_audio_seconds:
            return "buffer_limit", Overloaded("the service holds its maximum of buffered audio")
        return None

    def set_default_language(self, language: str | None) -> None:
        """The loaded model's language: sessions created while it loaded (none has had a
        pass yet) take it too."""
        self._default_language = language
        for session in self._sessions.values():
            if session.passes == 0:
                session.language = language

    def request_passes(self) -> None:
        """Queue a pass for every session with enough audio waiting: those that buffered
        audio while the model loaded may send nothing more (a whole file, a last blob)."""
        for session in list(self._sessions.values()):
            self._context.passes.request(session)

    def buffered_seconds(self) -> float:
        return to_seconds(sum(len(s.ring) for s in self._sessions.values()))

    def _create(self, key: SessionKey, chunk: Chunk, replacing: bool = False) -> Session:
        if not replacing:
            self._admit(key[0])
        # A blob that opens a stream starts the session's seq count there, and so does one
        # well past seq 0 (the process restarted, or the session was evicted, mid-capture);
        # any other first blob waits (bounded) for the seqs before it, seq 0 with its header.
        joins = chunk.seq > MAX_SEQ_BEFORE_A_LATE_SEQ0
        first_seq = chunk.seq if starts_stream(chunk.audio) or joins else 0
        session = Session(key, self._context, self._default_language, first_seq)
        self._sessions[key] = session
        self._per_user[key[0]] = self._per_user.get(key[0], 0) + 1
        self._metrics.sessions_started.inc()
        self._metrics.active_sessions.set(len(self._sessions))
        log.info("session_started", session=session.log_key, first_seq=first_seq)
        return session

    def _remove(self, session: Session, reason: EvictionReason) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
            left = self._per_user.get(session.key[0], 1) - 1
            if left > 0:
                self._per_user[session.key[0]] = left
            else:
                self._per_user.pop(session.key[0], None)
        session.close()
        self._metrics.sessions_evicted.inc(reason)
        self._metrics.active_sessions.set(len(self._sessions))
        log.info(
            "session_ended",
            session=session.log_key,
            reason=reason,
            audio_seconds=round(to_seconds(session.ring.end), 3),
            passes=session.passes,
        )

    def evict_idle(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        idle = [
            s
            for s in self._sessions.values()
            if now - s.last_seen > self._settings.session_ttl_seconds
        ]
        for session in idle:
            self._remove(session, "ttl")
        self.update_buffer_gauges()
        # Trim on this round and the next: a session's last references (a queued pass) may
        # only go a moment after it is evicted.
        if idle or self._evicted_last_round:
            return_freed_memory()
        self._evicted_last_round = bool(idle)
        return len(idle)

    def update_buffer_gauges(self) -> None:
        samples = sum(len(s.ring) for s in self._sessions.values())
        self._metrics.buffered_audio_seconds.set(to_seconds(samples))
        self._metrics.buffered_audio_bytes.set(samples * 4)

    def start(self) -> None:
        self._evictor = asyncio.create_task(self._evict_forever(), name="session-evictor")

    async def stop(self) -> None:
        if self._evictor is not None:
            self._evictor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._evictor
        for session in list(self._sessions.values()):
            self._remove(session, "shutdown")

    async def _evict_forever(self) -> None:
        interval = min(5.0, max(0.05, self._settings.session_ttl_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            self.evict_idle()
