"""One capture's pipeline state: reorder -> decode -> ring buffer -> passes -> committed words.

Everything here runs on the event loop except the decode and the pass, which go to executors.
A session's blobs are fed under its lock, so decoding always sees the stream in `seq` order.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import structlog

from .audio.decode import (
    MAX_GAP_FILL_SECONDS,
    DecodeResult,
    RestartFacts,
    SessionDecoder,
    starts_stream,
)
from .errors import DecodeErrorKind, UndecodableAudio
from .logging import session_hash
from .metrics import CommitRule, Metrics, SeqEvent
from .policy import LocalAgreementPolicy
from .ratelimit import TokenBucket
from .reorder import Arrival, Blob, Gap, ReorderBuffer, Step
from .ringbuffer import PcmRingBuffer
from .settings import Settings
from .timeline import PassRequest, PassResult, Word, to_samples, to_seconds

log = structlog.get_logger("isweep_backend.session")
SessionKey = tuple[str, int]

# How each out-of-order arrival is counted (isweep_seq_events_total).
SEQ_EVENT_OF: dict[Arrival, SeqEvent] = {
    Arrival.EARLY: "early",
    Arrival.DUPLICATE: "duplicate",
    Arrival.LATE: "late",
    Arrival.FAR_AHEAD: "far_ahead",
}

# A session that starts at seq > 0 without `chunk_start_seconds` places its first blob at seq
# times this: the extension's timeslice before any restart.
DEFAULT_BLOB_SECONDS = 1.0
# `chunk_start_seconds` is the client's own count and only a hint: no timeslice is this long.
MAX_BLOB_SECONDS = 10.0
# What Chrome really puts in a blob of the 1 s timeslice: 17 Opus frames of 60 ms (every
# recording in bench/corpus/; the 2 s timeslice after a restart gives 34, 2.04 s).
CHROME_BLOB_SECONDS = 1.02
# A recorder restart loses the audio since the last regular blob (none to a whole blob) and
# the recorder's stop; a session that joins after one can only take the middle.
RESTART_LOSS_GUESS_SECONDS = 0.55
# From stop() to the new stream's first sample the recorder records nothing: 10 to 55 ms
# measured (tests/fixtures/chrome/README.md); the bound on a restart's lost span allows this.
RECORDER_STOP_SECONDS = 0.1


@dataclass(frozen=True)
class BlobMeta:
    """What the request said about one blob, kept until the blob is fed."""

    arrived_at: float  # loop time the request arrived
    chunk_start_seconds: float | None


def timeline_origin_seconds(
    seq: int, chunk_start_seconds: float | None, joined_stream_seconds: float | None
) -> float:
    """Where on the session timeline a session whose first audio is blob `seq` > 0 begins.

    A restarted process, or a session evicted while the recorder went on, must not start its
    times at 0: the extension drops words that go backwards. The client's count is a floor
    (it counts whole timeslices, not the 1.02 s Chrome really puts in a blob, nor the blob a
    recorder restart drops); where the stream's own clock says more, that is nearer the truth.

    After a recorder restart the stream's clock began again, and the count falls behind by
    0.02 s a blob before the restart, 0.04 s a blob after it, and the audio the restart lost:
    over a second after a minute, six after ten. The extension would drop the moved session's
    words until its times caught up. The count itself says where the restart was (it adds 1 s
    a blob before and 2 s after), so the origin is the blobs before it at Chrome's length, the
    middle of what a restart loses, and the new stream's own clock: within about half a
    second of where the first process had the audio, however long the capture ran.
    """
    hint = seq * DEFAULT_BLOB_SECONDS if chunk_start_seconds is None else chunk_start_seconds
    estimate = joined_stream_seconds or 0.0
    if chunk_start_seconds is not None and joined_stream_seconds is not None:
        since_restart = round(chunk_start_seconds - seq)  # blobs the client counted at 2 s
        if 0 < since_restart <= seq:
            before = seq - since_restart
            estimate = (
                before * CHROME_BLOB_SECONDS + RESTART_LOSS_GUESS_SECONDS + joined_stream_seconds
            )
    # All of it rests on the client's claims: bound it by what `seq` blobs can hold.
    return min(max(hint, estimate, 0.0), seq * MAX_BLOB_SECONDS)


def restart_fill_samples(
    facts: RestartFacts, arrival_gap_seconds: float | None, new_stream_samples: int
) -> int:
    """Silence standing for the audio a recorder restart lost, in samples.

    The extension drops the blob `stop()` flushes and `seq` shows no hole, so the loss shows
    only in time: the wall clock between the last blob before and the first after, less the
    audio the first one holds. Clamped to what can have been lost: the seqs skipped before
    the restart (carried), plus at most one old blob and the recorder's stop time.
    """
    low = facts.carried_gap_samples
    if arrival_gap_seconds is None:
        return low
    high = low + facts.old_blob_samples + to_samples(RECORDER_STOP_SECONDS)
    # A blob is a client's claim: however long its old blobs were, no restart loses more.
    high = min(high, to_samples(MAX_GAP_FILL_SECONDS))
    estimate = to_samples(arrival_gap_seconds) - new_stream_samples
    return min(max(estimate, low), high)


@dataclass
class Outcome:
    """What one request did, for the HTTP layer and its logs."""

    arrival: Arrival
    words: list[Word] = field(default_factory=list)
    decode_error: DecodeErrorKind | None = None
    new_audio_samples: int = 0


class PassQueue(Protocol):
    """Where a session asks for recognition passes (the scheduler): it owns whether one is
    queued or running."""

    def request(self, session: Session) -> None:
        """Queue a pass for `session` if it has enough new audio and none is pending."""
        ...

    def pending(self, session: Session) -> bool:
        """Whether a pass for `session` is queued or running."""
        ...


@dataclass(frozen=True)
class SessionContext:
    """What every session of the service shares: its settings, metrics, decode threads and
    the queue its passes go through."""

    settings: Settings
    metrics: Metrics
    decode_executor: Executor
    passes: PassQueue


class Session:
    def __init__(
        self, key: SessionKey, context: SessionContext, language: str | None, first_seq: int
    ) -> None:
        self.key = key
        self.log_key = session_hash(*key)
        settings = context.settings
        self._settings = settings
        self._metrics = context.metrics
        self._decode_executor = context.decode_executor
        self._passes = context.passes
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
        self.ring = PcmRingBuffer(to_samples(settings.buffer_seconds))
        self.policy = LocalAgreementPolicy.from_settings(settings)
        self._lock = asyncio.Lock()
        self._pass_done = asyncio.Condition()
        self._gap_timer: asyncio.TimerHandle | None = None
        self._outbox: list[Word] = []
        # Loop time at which each stretch of audio arrived, to measure word-emit lag.
        self._arrivals: list[tuple[int, float]] = []
        self.processed_end = 0  # session sample one past the audio the last pass saw
        self.passes = 0
        self._blob_meta: dict[int, BlobMeta] = {}
        self._last_fed_arrival: float | None = None  # of the last blob fed, for restarts
        self._fed_from_start: bool | None = None  # was the first blob fed seq 0?
        self._timeline_started = False
        if first_seq > 0:
            # The first blob is not the capture's first: its header went elsewhere.
            self.decoder.allow_joining_mid_stream()

    # --- blobs in ----------------------------------------------------------------------------

    async def accept(
        self,
        seq: int,
        blob: bytes,
        answer_by: float,
        chunk_start_seconds: float | None = None,
        arrived_at: float | None = None,
    ) -> Outcome:
        """Feed one blob; wait for the pass covering it until `answer_by` (loop time).

        `arrived_at` (loop time, default now) and `chunk_start_seconds` place audio in time
        where the stream cannot: at a recorder restart, and when a session starts mid-stream.
        """
        self.last_seen = time.monotonic()
        loop = asyncio.get_running_loop()
        if seq == 0 and self.seq0_digest is None:
            self.seq0_digest = hashlib.sha256(blob).digest()
        async with self._lock:
            arrived = loop.time() if arrived_at is None else arrived_at
            self._note_meta(seq, BlobMeta(arrived, chunk_start_seconds))
            arrival, steps = self.reorder.offer(seq, blob, loop.time())
            if arrival is not Arrival.IN_ORDER:
                self._metrics.seq_events.inc(SEQ_EVENT_OF[arrival])
            outcome = Outcome(arrival)
            await self._feed(steps, outcome, seq)
            self._arm_gap_timer()
        if outcome.new_audio_samples:
            self._passes.request(self)
            await self._wait_for_pass(self.ring.end, answer_by - loop.time())
        outcome.words = self.take_words()
        return outcome

    async def _feed(self, steps: list[Step], outcome: Outcome | None, request_seq: int) -> None:
        loop = asyncio.get_running_loop()
        for step in steps:
            if isinstance(step, Gap):
                self._metrics.seq_events.inc("gap", step.count)
                log.info(
                    "seq_gap_skipped",
                    session=self.log_key,
                    first_seq=step.first_seq,
                    count=step.count,
                )
                self.decoder.note_gap(step.count)
                continue
            assert isinstance(step, Blob)
            meta = self._blob_meta.pop(step.seq, None)
            if self._fed_from_start is None:
                self._fed_from_start = step.seq == 0
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
                self._metrics.seq_events.inc("restart")
                self._fill_restart_gap(step.seq, result, meta)
            if meta is not None:
                self._last_fed_arrival = meta.arrived_at
            if result.resynced_bytes:
                self._metrics.resynced_bytes.inc(result.resynced_bytes)
            if result.pcm.size and not self._timeline_started:
                self._start_timeline(step.seq, meta)
            if result.pcm.size:
                lost = self.ring.append(result.pcm)
                if lost:
                    self._metrics.overwritten_audio.inc(to_seconds(lost))
                self._metrics.decoded_audio.inc(to_seconds(result.pcm.size))
                self._arrivals.append((self.ring.end, loop.time()))
                # Audio already gone from the buffer can no longer end a word: forget it.
                while len(self._arrivals) > 1 and self._arrivals[1][0] <= self.ring.start:
                    self._arrivals.pop(0)
                if outcome is not None:
                    outcome.new_audio_samples += result.pcm.size

    def _note_meta(self, seq: int, meta: BlobMeta) -> None:
        if seq < self.reorder.next_seq or seq in self._blob_meta:
            return  # fed already, or a resend of a held blob: the first arrival counts
        if len(self._blob_meta) > 2 * self._settings.max_held_blobs + 8:
            # Blobs the reorder buffer dropped never come out: forget what they said.
            waiting = sorted(s for s in self._blob_meta if s >= self.reorder.next_seq)
            keep = waiting[: self._settings.max_held_blobs + 1]
            self._blob_meta = {s: self._blob_meta[s] for s in keep}
        self._blob_meta[seq] = meta

    def _start_timeline(self, seq: int, meta: BlobMeta | None) -> None:
        """Place the session's first audio: 0 for a capture's first blob, else near where the
        capture really is, so that times continue those an earlier session already sent."""
        self._timeline_started = True
        if self._fed_from_start:
            return  # the capture's own start, even if its first blobs held no audio
        origin = timeline_origin_seconds(
            seq,
            meta.chunk_start_seconds if meta is not None else None,
            self.decoder.joined_stream_seconds,
        )
        self.ring.start_at(to_samples(origin))
        self.processed_end = self.ring.end
        log.info(
            "session_joined_mid_stream",
            session=self.log_key,
            seq=seq,
            origin_seconds=round(origin, 3),
        )

    def _fill_restart_gap(self, seq: int, result: DecodeResult, meta: BlobMeta | None) -> None:
        """Insert silence where a recorder restart lost audio, before the new stream's."""
        facts = result.restart
        if facts is None:
            return
        arrival_gap = None
        if meta is not None and self._last_fed_arrival is not None:
            arrival_gap = meta.arrived_at - self._last_fed_arrival
        fill = restart_fill_samples(facts, arrival_gap, result.pcm.size - facts.at_sample)
        if fill > 0:
            silence = np.zeros(fill, dtype=np.float32)
            result.pcm = np.concatenate(
                [result.pcm[: facts.at_sample], silence, result.pcm[facts.at_sample :]]
            )
            result.gap_fill_samples += fill
        log.info(
            "recorder_restarted",
            session=self.log_key,
            seq=seq,
            filled_seconds=round(to_seconds(fill), 3),
            carried_gap_seconds=round(to_seconds(facts.carried_gap_samples), 3),
        )

    def _note_decode_error(
        self,
        blob: Blob,
        kind: DecodeErrorKind,
        reason: str,
        outcome: Outcome | None,
        request_seq: int,
    ) -> None:
        self._metrics.decode_errors.inc(kind)
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
            self._passes.request(self)

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
        counts: tuple[tuple[CommitRule, int], ...] = (
            ("agreement", decision.by_agreement),
            ("stability", decision.by_stability),
            ("end_of_speech", decision.by_end_of_speech),
            ("deadline", decision.by_deadline),
        )
        for rule, count in counts:
            if count:
                m.words_committed.inc(rule, count)
        if result.dropped_segments:
            m.hallucination_drops.inc("segment", result.dropped_segments)
        if result.dropped_words:
            m.hallucination_drops.inc("outside_speech", result.dropped_words)
        if decision.dropped_at_end_of_speech:
            m.hallucination_drops.inc("end_of_speech", decision.dropped_at_end_of_speech)
        if decision.words:
            log.info(
                "words_committed",
                session=self.log_key,
                count=len(decision.words),
                until_seconds=round(to_seconds(decision.words[-1].end), 3),
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
            return self.processed_end >= target or not self._passes.pending(self) or self.closed

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

    def is_new_capture(self, seq: int, blob: bytes) -> bool:
        """Whether blob `seq` starts a new recording on this live session: seq 0 with a stream
        header, unless it is a resend of the session's own seq 0, or the seq 0 it is still
        waiting for."""
        if seq != 0 or not starts_stream(blob):
            return False
        if self.seq0_digest is None:
            return self.reorder.next_seq > 0
        return hashlib.sha256(blob).digest() != self.seq0_digest

    def close(self) -> None:
        self.closed = True
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
