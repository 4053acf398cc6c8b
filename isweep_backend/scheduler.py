"""A fair queue of recognition passes across sessions, and the workers that run them.

Each session is in the queue at most once (a request that finds its session queued or running
coalesces: the next pass sees all new audio), and a session goes to the back after its pass,
so sessions take turns. The scheduler alone knows which sessions are queued or running, and
since when; a session asks (`pending`). Passes run on an executor the app owns, never on the
event loop.

Under load the service degrades before it refuses: each pass must cover at least the minimum
new audio plus the current queue wait, so sessions get fewer, longer passes; the registry
sheds new sessions once the pass cycle passes its limit. The load signal is a function of
time: the averages fade while nothing is queued or running, so an idle service is not loaded.
The queue never holds more entries than there are sessions.

Until the model is loaded (`start`), no pass runs: sessions buffer their audio, and their
next request after that queues a pass over all of it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import deque
from concurrent.futures import Executor

import structlog

from .metrics import Metrics
from .recognition import Recognizer, run_pass
from .session import Session
from .timeline import to_samples, to_seconds

log = structlog.get_logger("isweep_backend.scheduler")
WAIT_EWMA_WEIGHT = 0.2
# Shedding stops once the pass cycle is back under this share of its limit.
RECOVERY_FRACTION = 0.7
# Under load a pass waits for at most this much extra new audio.
MAX_DEGRADE_SECONDS = 3.0
# While nothing is queued or running, the load averages fade by e each this many seconds:
# a 5 s cycle falls under 70% of the 1.5 s limit in under 2 s of idleness.
IDLE_FADE_SECONDS = 1.0
# A worker that ended (an error its guard could not handle) is replaced after this long, so
# that a fault that kills every worker does not spin; /readyz answers 503 meanwhile.
WORKER_RESTART_DELAY_SECONDS = 2.0


def faded(value: float, idle_seconds: float) -> float:
    """A load average after `idle_seconds` with nothing in flight."""
    return value * math.exp(-idle_seconds / IDLE_FADE_SECONDS)


class PassScheduler:
    def __init__(
        self,
        executor: Executor,
        metrics: Metrics,
        workers: int,
        min_pass_seconds: float,
        overload_cycle_seconds: float,
    ) -> None:
        self._recognizer: Recognizer | None = None  # set by start(), once the model is loaded
        self._executor = executor
        self._metrics = metrics
        self._workers = workers
        self._min_new_samples = to_samples(min_pass_seconds)
        self._wait_ewma = 0.0
        self._cycle_ewma = 0.0  # queue wait + pass: how long a session waits for its words
        self._idle_since: float | None = None  # since when nothing is queued or running
        self._overload_cycle = overload_cycle_seconds
        self._shedding = False
        self._queue: deque[Session] = deque()
        # Sessions queued or running, each with when it was queued: a second request for
        # one of them coalesces into its pass.
        self._queued_at: dict[Session, float] = {}
        self._ready = asyncio.Event()
        self._worker_tasks: dict[int, asyncio.Task[None]] = {}
        self._stopping = False
        self._in_flight = 0  # sessions a worker is busy with, applying the result included
        self._idle = asyncio.Event()
        self._idle.set()
        self.running = 0  # passes on the executor now

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def workers(self) -> int:
        """Pass workers the service runs once the model is loaded."""
        return self._workers

    def workers_alive(self) -> int:
        return sum(not task.done() for task in self._worker_tasks.values())

    def start(self, recognizer: Recognizer) -> None:
        """Start the workers on the loaded model (not once stopping: a model that finishes
        loading during shutdown runs nothing)."""
        if self._stopping:
            return
        self._recognizer = recognizer
        for slot in range(self._workers):
            self._spawn_worker(slot)
        self._metrics.pass_workers.set(self._workers)

    async def stop(self, timeout: float) -> None:
        """Refuse new passes, drop queued ones (their requests answer now), let passes in
        flight finish for up to `timeout`, then stop the workers. Stopping twice is a no-op."""
        if self._stopping:
            return
        self._stopping = True
        while self._queue:
            await self._release(self._queue.popleft())
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("passes_abandoned", running=self.running)
        tasks = list(self._worker_tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._worker_tasks.clear()
        self._metrics.pass_workers_alive.set(0)

    # --- the load signal -----------------------------------------------------------------------

    def _oldest_wait(self, now: float) -> float:
        return now - self._queued_at[self._queue[0]] if self._queue else 0.0

    def _idle_seconds(self, now: float) -> float:
        return 0.0 if self._idle_since is None else now - self._idle_since

    def _note_busy(self, now: float) -> None:
        # Fold the idle stretch into the averages: fading applies to idle time only.
        if self._idle_since is not None:
            idle = self._idle_seconds(now)
            self._wait_ewma = faded(self._wait_ewma, idle)
            self._cycle_ewma = faded(self._cycle_ewma, idle)
            self._idle_since = None

    def _note_if_idle(self) -> None:
        if not self._queue and not self._in_flight and self._idle_since is None:
            self._idle_since = time.perf_counter()

    def load_seconds(self) -> float:
        """How far behind recognition is: the recent mean queue wait (fading while idle), or
        the wait of the oldest queued session if that is longer (a stall shows before any
        pass ends)."""
        now = time.perf_counter()
        return max(faded(self._wait_ewma, self._idle_seconds(now)), self._oldest_wait(now))

    def cycle_seconds(self) -> float:
        """The pass cycle now: its recent mean (fading while idle), or the wait of the oldest
        queued session if that is longer."""
        now = time.perf_counter()
        return max(faded(self._cycle_ewma, self._idle_seconds(now)), self._oldest_wait(now))

    def overloaded(self) -> bool:
        """Whether new sessions should be refused, with hysteresis so that one quick pass
        between slow ones does not open the door to a crowd of retries."""
        cycle = self.cycle_seconds()
        if cycle > self._overload_cycle:
            self._shedding = True
        elif cycle < RECOVERY_FRACTION * self._overload_cycle:
            self._shedding = False
        return self._shedding

    def min_new_samples(self) -> int:
        extra = min(MAX_DEGRADE_SECONDS, self.load_seconds())
        return self._min_new_samples + to_samples(extra)

    # --- the queue -----------------------------------------------------------------------------

    def request(self, session: Session) -> None:
        """Queue a pass for `session` if it has enough new audio. A no-op while the model
        loads (the audio waits in the session's buffer) and once the scheduler is stopping."""
        if self._recognizer is None or self._stopping:
            return
        if session in self._queued_at or not session.needs_pass(self.min_new_samples()):
            return
        now = time.perf_counter()
        self._note_busy(now)
        self._queued_at[session] = now
        self._queue.append(session)
        self._ready.set()

    def pending(self, session: Session) -> bool:
        """Whether a pass for `session` is queued or running."""
        return session in self._queued_at

    async def _next(self) -> Session:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    # --- workers -------------------------------------------------------------------------------

    def _spawn_worker(self, slot: int) -> None:
        task = asyncio.create_task(self._work(), name=f"pass-worker-{slot}")
        task.add_done_callback(functools.partial(self._worker_ended, slot))
        self._worker_tasks[slot] = task
        self._metrics.pass_workers_alive.set(self.workers_alive())

    def _worker_ended(self, slot: int, task: asyncio.Task[None]) -> None:
        self._metrics.pass_workers_alive.set(self.workers_alive())
        if self._stopping:
            return
        try:
            task.result()
        except BaseException:  # whatever ended it: say so, and replace the worker
            log.exception("pass_worker_died", worker=slot)
        else:
            log.error("pass_worker_died", worker=slot)
        self._metrics.pass_worker_restarts.inc()
        loop = asyncio.get_running_loop()
        loop.call_later(WORKER_RESTART_DELAY_SECONDS, self._restart_worker, slot)

    def _restart_worker(self, slot: int) -> None:
        if self._stopping or not self._worker_tasks[slot].done():
            return
        self._spawn_worker(slot)
        log.info("pass_worker_restarted", worker=slot)

    async def _work(self) -> None:
        while True:
            # One call per pass, so no local keeps the last session alive between passes.
            await self._run_guarded(await self._next())

    async def _run_guarded(self, session: Session) -> None:
        """Run one pass; whatever fails around it, its waiters are answered and the worker
        goes on to the next session."""
        finished = False
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._run_pass(session)
            finished = True
        except Exception:
            self._metrics.passes.inc("error")
            log.exception("pass_worker_error", session=session.log_key)
        finally:
            if not finished:
                await self._release(session)
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
            self._note_if_idle()

    async def _release(self, session: Session) -> None:
        """End a pass that did not complete: the session may queue again, and its waiting
        requests answer with what is committed. Its audio stays for the next pass."""
        self._queued_at.pop(session, None)
        await session.pass_failed(session.processed_end)

    async def _run_pass(self, session: Session) -> None:
        if session.closed or self._recognizer is None:
            self._queued_at.pop(session, None)
            return
        started = time.perf_counter()
        waited = started - self._queued_at[session]
        self._wait_ewma = (1 - WAIT_EWMA_WEIGHT) * self._wait_ewma + WAIT_EWMA_WEIGHT * waited
        self._metrics.queue_wait.observe(waited)
        request = session.make_pass_request()
        new_audio = request.offset + request.audio.size - session.processed_end
        self.running += 1
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, run_pass, self._recognizer, request)
        except Exception:
            self._metrics.passes.inc("error")
            log.exception("pass_failed", session=session.log_key)
            self._queued_at.pop(session, None)
            await session.pass_failed(request.offset + request.audio.size)
            return
        finally:
            self.running -= 1
        elapsed = time.perf_counter() - started
        cycle = waited + elapsed
        self._cycle_ewma = (1 - WAIT_EWMA_WEIGHT) * self._cycle_ewma + WAIT_EWMA_WEIGHT * cycle
        self._metrics.pass_duration.observe(elapsed)
        self._metrics.pass_audio.observe(to_seconds(request.audio.size))
        self._metrics.passes.inc("vad_skipped" if result.skipped_by_vad else "ok")
        if new_audio > 0:
            self._metrics.real_time_factor.observe(elapsed / to_seconds(new_audio))
        log.debug(
            "pass_done",
            session=session.log_key,
            audio_seconds=round(to_seconds(request.audio.size), 2),
            queued_seconds=round(waited, 3),
            pass_seconds=round(elapsed, 3),
            vad_skipped=result.skipped_by_vad,
        )
        self._queued_at.pop(session, None)
        await session.apply_pass(result)
        # Audio that arrived during the pass gets the next turn, behind everyone waiting.
        self.request(session)
