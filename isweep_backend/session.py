"""One capture's pipeline state: reorder -> decode -> ring buffer -> passes -> committed words.

Everything here runs on the event loop except the decode and the pass, which go to executors.
A session's blobs are fed under its lock, so decoding always sees the stream in `seq` order.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import structlog

from .decode import SAMPLE_RATE, SessionDecoder, starts_stream
from .engine import PassRequest, PassResult, Word
from .errors import UndecodableAudio
from .metrics import Metrics
from .policy import LocalAgreementPolicy
from .ratelimit import TokenBucket
from .reorder import Arrival, Blob, Gap, ReorderBuffer, Step
from .ringbuffer import PcmRingBuffer
from .settings import Settings

log = structlog.get_logger("isweep_backend.session")
SessionKey = tuple[str, int]


@dataclass
class Outcome:
    """What one request did, for the HTTP layer and its logs."""

    arrival: Arrival
    words: list[Word] = field(default_factory=list)
    decode_error: str | None = None
    new_audio_samples: int = 0


# Keyed per process: a plain hash of a guessable user id could be reversed by trying ids.
# Sessions live in one process only, so nothing needs the name to survive a restart.
_SESSION_HASH_KEY = secrets.token_bytes(32)


def session_hash(key: SessionKey) -> str:
    """A stable (for this process), non-reversible name for a session, safe to log."""
    message = f"{key[0]}\x00{key[1]}".encode()
    return hmac.new(_SESSION_HASH_KEY, message, hashlib.sha256).hexdigest()[:16]


class Session:
    def __init__(
        self,
        key: SessionKey,
        settings: Settings,
        metrics: Metrics,
        decode_executor: Executor,
        request_pass: Callable[[Session], None],
        language: str | None,
        first_seq: int,
    ) -> None:
        self.key = key
        self.log_key = session_hash(key)
        self._settings = settings
        self._metrics = metrics
        self._decode_executor = decode_executor
        self._request_pass = request_pass
        self.language = language
        self.seq0_digest: bytes | None = None  # to tell a resent seq 0 from a new capture
        self.last_seen = time.monotonic()
        self.closed = False
        self.rate_limit = TokenBucket(
            settings.max_requests_per_second, 2 * settings.max_requests_per_second, self.last_seen
        )
        self.reorder = ReorderBuffer(
            first_seq, settings.reorder_wait_seconds, settings.max_held_blobs
        )
        self.decoder = SessionDecoder()
        self.ring = PcmRingBuffer(round(settings.buffer_seconds * SAMPLE_RATE))
        self.policy = LocalAgreementPolicy(
            settings.commit_deadline_seconds, settings.trim_seconds, settings.end_of_speech_seconds
        )
        self._lock = asyncio.Lock()
        self._pass_done = asyncio.Condition()
        self._gap_timer: asyncio.TimerHandle | None = None
        self._outbox: list[Word] = []
        # Loop time at which each stretch of audio arrived, to measure word-emit lag.
        self._arrivals: list[tuple[int, float]] = []
        self.pass_pending = False  # queued or running: a second request coalesces into it
        self.pass_enqueued_at = 0.0
        self.processed_end = 0  # session sample one past the audio the last pass saw
        self.passes = 0

    # --- blobs in ----------------------------------------------------------------------------

    async def accept(self, seq: int, blob: bytes, answer_by: float) -> Outcome:
        """Feed one blob; wait for the pass covering it until `answer_by` (loop time)."""
        self.last_seen = time.monotonic()
        loop = asyncio.get_running_loop()
        if seq == 0 and self.seq0_digest is None:
            self.seq0_digest = hashlib.sha256(blob).digest()
        async with self._lock:
            arrival, steps = self.reorder.offer(seq, blob, loop.time())
            if arrival is not Arrival.IN_ORDER:
                self._metrics.seq_events.labels(arrival.value).inc()
            outcome = Outcome(arrival)
            await self._feed(steps, outcome, seq)
            self._arm_gap_timer()
        if outcome.new_audio_samples:
            self._request_pass(self)
            await self._wait_for_pass(self.ring.end, answer_by - loop.time())
        outcome.words = self.take_words()
        return outcome

    async def _feed(self, steps: list[Step], outcome: Outcome | None, request_seq: int) -> None:
        loop = asyncio.get_running_loop()
        for step in steps:
            if isinstance(step, Gap):
                self._metrics.seq_events.labels("gap").inc(step.count)
                log.info(
                    "seq_gap_skipped",
                    session=self.log_key,
                    first_seq=step.first_seq,
                    count=step.count,
                )
                self.decoder.note_gap(step.count)
                continue
            assert isinstance(step, Blob)
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(
                    self._decode_executor, self.decoder.decode, step.data
                )
            except UndecodableAudio as exc:
                self._note_decode_error(step, exc.kind, str(exc), outcome, request_seq)
                continue
            except Exception as exc:
                # A decoder bug must not take the session down: resync past this blob.
                log.exception("decoder_failed", session=self.log_key, seq=step.seq)
                self.decoder.note_gap(1)
                self._note_decode_error(step, "decoder_error", repr(exc), outcome, request_seq)
                continue
            self._metrics.decode_duration.observe(time.perf_counter() - started)
            if result.restarted:
                self._metrics.seq_events.labels("restart").inc()
                log.info("recorder_restarted", session=self.log_key, seq=step.seq)
            if result.resynced_bytes:
                self._metrics.resynced_bytes.inc(result.resynced_bytes)
            if result.pcm.size:
                lost = self.ring.append(result.pcm)
                if lost:
                    self._metrics.overwritten_audio.inc(lost / SAMPLE_RATE)
                self._metrics.decoded_audio.inc(result.pcm.size / SAMPLE_RATE)
                self._arrivals.append((self.ring.end, loop.time()))
                # Audio already gone from the buffer can no longer end a word: forget it.
                while len(self._arrivals) > 1 and self._arrivals[1][0] <= self.ring.start:
                    self._arrivals.pop(0)
                if outcome is not None:
                    outcome.new_audio_samples += result.pcm.size

    def _note_decode_error(
        self, blob: Blob, kind: str, reason: str, outcome: Outcome | None, request_seq: int
    ) -> None:
        self._metrics.decode_errors.labels(kind).inc()
        log.warning(
            "chunk_undecodable",
            session=self.log_key,
            seq=blob.seq,
            kind=kind,
            reason=reason,
            bytes=len(blob.data),
        )
        if outcome is not None and blob.seq == request_seq:
            outcome.decode_error = kind

    def _arm_gap_timer(self) -> None:
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        deadline = self.reorder.gap_deadline()
        if deadline is None or self.closed:
            return
        loop = asyncio.get_running_loop()
        # A fresh context: the timer's log lines belong to no request.
        self._gap_timer = loop.call_at(
            deadline,
            lambda: loop.create_task(self._give_up_on_gap()),
            context=contextvars.Context(),
        )

    async def _give_up_on_gap(self) -> None:
        async with self._lock:
            if self.closed:
                return
            steps = self.reorder.expire(asyncio.get_running_loop().time())
            before = self.ring.end
            await self._feed(steps, None, -1)
            self._arm_gap_timer()
        if self.ring.end > before:
            self._request_pass(self)

    # --- passes ------------------------------------------------------------------------------

    def needs_pass(self, min_new_samples: int) -> bool:
        return not self.closed and self.ring.end - self.processed_end >= min_new_samples

    def make_pass_request(self) -> PassRequest:
        return PassRequest(
            audio=self.ring.window(),
            offset=self.ring.start,
            prompt=self.policy.prompt(self.ring.start),
            language=self.language,
        )

    async def apply_pass(self, result: PassResult) -> None:
        self.passes += 1
        if self.language is None and result.language and not result.skipped_by_vad:
            self.language = result.language
            log.info("language_detected", session=self.log_key, language=self.language)
        decision = self.policy.apply(result, self.ring.start)
        self._outbox.extend(decision.words)
        m = self._metrics
        for rule, count in (
            ("agreement", decision.by_agreement),
            ("end_of_speech", decision.by_end_of_speech),
            ("deadline", decision.by_deadline),
        ):
            if count:
                m.words_committed.labels(rule).inc(count)
        if result.dropped_segments:
            m.hallucination_drops.labels("segment").inc(result.dropped_segments)
        if result.dropped_words:
            m.hallucination_drops.labels("outside_speech").inc(result.dropped_words)
        if decision.words:
            log.info(
                "words_committed",
                session=self.log_key,
                count=len(decision.words),
                until_seconds=round(decision.words[-1].end / SAMPLE_RATE, 3),
            )
        if decision.trim_to is not None:
            self.ring.trim_to(decision.trim_to)
        self.processed_end = max(self.processed_end, result.audio_end)
        async with self._pass_done:
            self._pass_done.notify_all()

    async def pass_failed(self, audio_end: int) -> None:
        self.processed_end = max(self.processed_end, audio_end)
        async with self._pass_done:
            self._pass_done.notify_all()

    async def _wait_for_pass(self, target: int, timeout: float) -> None:
        if timeout <= 0:
            return

        def covered() -> bool:
            return self.processed_end >= target or not self.pass_pending or self.closed

        try:
            async with self._pass_done:
                await asyncio.wait_for(self._pass_done.wait_for(covered), timeout)
        except asyncio.TimeoutError:
            pass

    # --- words out ---------------------------------------------------------------------------

    def take_words(self) -> list[Word]:
        words, self._outbox = self._outbox, []
        if words:
            now = asyncio.get_running_loop().time()
            for word in words:
                arrived = self._arrival_time(word.end)
                if arrived is not None:
                    self._metrics.word_emit_lag.observe(max(0.0, now - arrived))
            self._arrivals = [a for a in self._arrivals if a[0] > words[-1].end]
        return words

    def _arrival_time(self, sample: int) -> float | None:
        for end, at in self._arrivals:
            if end >= sample:
                return at
        return None

    def close(self) -> None:
        self.closed = True
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None


def is_new_capture(session: Session, seq: int, blob: bytes) -> bool:
    """seq 0 with a stream header on a live session is a new recording, unless it is a resend
    of the session's own seq 0, or the seq 0 the session is still waiting for."""
    if seq != 0 or not starts_stream(blob):
        return False
    if session.seq0_digest is None:
        return session.reorder.next_seq > 0
    return hashlib.sha256(blob).digest() != session.seq0_digest
