"""Puts one session's blobs back in `seq` order: holds early ones, drops duplicates, and gives
up on a missing `seq` after a bounded wait."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# Early blobs a session may hold, in bytes, whatever their count: a bound on its memory.
MAX_HELD_BYTES = 8 << 20


class Arrival(Enum):
    IN_ORDER = "in_order"
    EARLY = "early"  # held until the gap before it fills or times out
    DUPLICATE = "duplicate"  # already fed or already held: adds nothing
    LATE = "late"  # its seq was given up on: the stream has moved past it


@dataclass(frozen=True)
class Blob:
    seq: int
    data: bytes


@dataclass(frozen=True)
class Gap:
    """`count` seqs that will never be fed; the decoder must resync after them."""

    first_seq: int
    count: int


Step = Blob | Gap


class ReorderBuffer:
    def __init__(
        self,
        next_seq: int,
        max_wait_seconds: float,
        max_held: int,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self.next_seq = next_seq
        self.max_wait_seconds = max_wait_seconds
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self._held_bytes = 0
        self._held: dict[int, bytes] = {}
        self._waiting_since: float | None = None  # when the current gap was first seen
        self._skipped: set[int] = set()  # recently given-up seqs, to tell late from duplicate

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def gap_deadline(self) -> float | None:
        """When the current gap will be given up on, or None if nothing is held."""
        if self._waiting_since is None:
            return None
        return self._waiting_since + self.max_wait_seconds

    def offer(self, seq: int, data: bytes, now: float) -> tuple[Arrival, list[Step]]:
        """Take one blob; returns how it arrived and the steps now ready, in order."""
        if seq < self.next_seq:
            return (Arrival.LATE if seq in self._skipped else Arrival.DUPLICATE), []
        if seq in self._held:
            return Arrival.DUPLICATE, []
        if seq == self.next_seq:
            steps: list[Step] = [Blob(seq, data)]
            self.next_seq += 1
            steps.extend(self._release_consecutive())
            self._restart_wait(now)
            return Arrival.IN_ORDER, steps
        self._held[seq] = data
        self._held_bytes += len(data)
        if self._waiting_since is None:
            self._waiting_since = now
        if len(self._held) > self.max_held or self._held_bytes > self.max_held_bytes:
            return Arrival.EARLY, self._skip_to_first_held(now)
        return Arrival.EARLY, self.expire(now)

    def expire(self, now: float) -> list[Step]:
        """Give up on the missing seq if it has been waited for long enough."""
        deadline = self.gap_deadline()
        if deadline is None or now < deadline:
            return []
        return self._skip_to_first_held(now)

    def _skip_to_first_held(self, now: float) -> list[Step]:
        first = min(self._held)
        steps: list[Step] = [Gap(self.next_seq, first - self.next_seq)]
        if len(self._skipped) > 1024:
            self._skipped.clear()
        self._skipped.update(range(self.next_seq, min(first, self.next_seq + 64)))
        self.next_seq = first
        steps.extend(self._release_consecutive())
        self._restart_wait(now)
        return steps

    def _release_consecutive(self) -> list[Step]:
        steps: list[Step] = []
        while self.next_seq in self._held:
            data = self._held.pop(self.next_seq)
            self._held_bytes -= len(data)
            steps.append(Blob(self.next_seq, data))
            self.next_seq += 1
        return steps

    def _restart_wait(self, now: float) -> None:
        # A gap that remains after releasing is a new gap: its wait starts now.
        self._waiting_since = now if self._held else None
