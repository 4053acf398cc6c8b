"""A fair queue of recognition passes across sessions.

Each session is in the queue at most once (a request that finds its session queued or running
coalesces: the next pass sees all new audio), and a session goes to the back after its pass,
so sessions take turns. Passes run on an executor the app owns, never on the event loop.

Under load the service degrades before it refuses: each pass must cover at least the minimum
new audio plus the current queue wait, so sessions get fewer, longer passes; the registry
sheds new sessions once the wait passes its limit. The queue never holds more entries than
there are sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import Executor

import structlog

from .decode import SAMPLE_RATE
from .engine import Engine
from .metrics import Metrics
from .session import Session

log = structlog.get_logger("isweep_backend.scheduler")
WAIT_EWMA_WEIGHT = 0.2
# Shedding stops once the pass cycle is back under this share of its limit.
RECOVERY_FRACTION = 0.7
# Under load a pass waits for at most this much extra new audio.
MAX_DEGRADE_SECONDS = 3.0


class PassScheduler:
    def __init__(
        self,
        engine: Engine,
        executor: Executor,
        metrics: Metrics,
        workers: int,
        min_pass_seconds: float,
        overload_cycle_seconds: float,
    ) -> None:
        self._engine = engine
        self._executor = executor
        self._metrics = metrics
        self._workers = workers
        self._min_new_samples = round(min_pass_seconds * SAMPLE_RATE)
        self._wait_ewma = 0.0
        self._cycle_ewma = 0.0  # queue wait + pass: how long a session waits for its words
        self._overload_cycle = overload_cycle_seconds
        self._shedding = False
        self._queue: deque[Session] = deque()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self.running = 0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        for n in range(self._workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"pass-worker-{n}"))

    async def stop(self, timeout: float) -> None:
        """Let passes in flight finish (up to `timeout`), then stop the workers."""
        self._queue.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def load_seconds(self) -> float:
        """How far behind recognition is: the recent mean queue wait, or the wait of the
        oldest queued session if that is longer (a stall shows before any pass ends)."""
        oldest = time.perf_counter() - self._queue[0].pass_enqueued_at if self._queue else 0.0
        return max(self._wait_ewma, oldest)

    def overloaded(self) -> bool:
        """Whether new sessions should be refused, with hysteresis so that one quick pass
        between slow ones does not open the door to a crowd of retries."""
        oldest = time.perf_counter() - self._queue[0].pass_enqueued_at if self._queue else 0.0
        cycle = max(self._cycle_ewma, oldest)
        if cycle > self._overload_cycle:
            self._shedding = True
        elif cycle < RECOVERY_FRACTION * self._overload_cycle:
            self._shedding = False
        return self._shedding

    def min_new_samples(self) -> int:
        extra = min(MAX_DEGRADE_SECONDS, self.load_seconds())
        return self._min_new_samples + round(extra * SAMPLE_RATE)

    def request(self, session: Session) -> None:
        if session.pass_pending or not session.needs_pass(self.min_new_samples()):
            return
        session.pass_pending = True
        session.pass_enqueued_at = time.perf_counter()
        self._queue.append(session)
        self._ready.set()

    async def _next(self) -> Session:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    async def _work(self) -> None:
        while True:
            # One call per pass, so no local keeps the last session alive between passes.
            await self._run_pass(await self._next())

    async def _run_pass(self, session: Session) -> None:
        if session.closed:
            session.pass_pending = False
            return
        started = time.perf_counter()
        waited = started - session.pass_enqueued_at
        self._wait_ewma = (1 - WAIT_EWMA_WEIGHT) * self._wait_ewma + WAIT_EWMA_WEIGHT * waited
        self._metrics.queue_wait.observe(waited)
        request = session.make_pass_request()
        new_audio = request.offset + request.audio.size - session.processed_end
        self.running += 1
        self._idle.clear()
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, self._engine.run_pass, request)
        except Exception:
            self._metrics.passes.labels("error").inc()
            log.exception("pass_failed", session=session.log_key)
            session.pass_pending = False
            await session.pass_failed(request.offset + request.audio.size)
            return
        finally:
            self.running -= 1
            if not self.running:
                self._idle.set()
        elapsed = time.perf_counter() - started
        cycle = waited + elapsed
        self._cycle_ewma = (1 - WAIT_EWMA_WEIGHT) * self._cycle_ewma + WAIT_EWMA_WEIGHT * cycle
        self._metrics.pass_duration.observe(elapsed)
        self._metrics.pass_audio.observe(request.audio.size / SAMPLE_RATE)
        self._metrics.passes.labels("vad_skipped" if result.skipped_by_vad else "ok").inc()
        if new_audio > 0:
            self._metrics.real_time_factor.observe(elapsed / (new_audio / SAMPLE_RATE))
        session.pass_pending = False
        await session.apply_pass(result)
        # Audio that arrived during the pass gets the next turn, behind everyone waiting.
        self.request(session)
