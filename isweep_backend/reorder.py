"""Puts one session's blobs back in `seq` order: holds early ones, drops duplicates and blobs
too far ahead, and gives up on a missing `seq` after a bounded wait.

The hold window is the `max_held` seqs after the newest one this stream has sent (fed or
held). A live recorder's overlapping or bursting requests stay that close to each other, so a
blob beyond the window is a stale one (an earlier capture's, a forged one) and is dropped:
held, it would later be fed in place of the real blob of its seq. An early blob is held at
most `max_wait_seconds` from its own arrival, whatever arrives meanwhile.
"""

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
    FAR_AHEAD = "far_ahead"  # beyond the hold window: dropped, it cannot be this stream's


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
        self._held_since: dict[int, float] = {}  # when each held blob arrived
        self._fed_any = False
        self._skipped: set[int] = set()  # recently given-up seqs, to tell late from duplicate

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def gap_deadline(self) -> float | None:
        """When the current gap will be given up on, or None if nothing is held: the wait of
        the longest-held blob runs out."""
        if not self._held_since:
            return None
        return min(self._held_since.values()) + self.max_wait_seconds

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
            self._note_fed()
            return Arrival.IN_ORDER, steps
        # Before anything is fed the session has no position yet (it may have joined a
        # stream midway), so nothing counts as far ahead until then.
        if self._fed_any and self._beyond_window(seq):
            return Arrival.FAR_AHEAD, []
        self._held[seq] = data
        self._held_since[seq] = now
        self._held_bytes += len(data)
        if len(self._held) > self.max_held or self._held_bytes > self.max_held_bytes:
            return Arrival.EARLY, self._skip_to_first_held()
        return Arrival.EARLY, self.expire(now)

    def expire(self, now: float) -> list[Step]:
        """Give up on missing seqs before any blob that has been held long enough."""
        steps: list[Step] = []
        while (deadline := self.gap_deadline()) is not None and now >= deadline:
            steps.extend(self._skip_to_first_held())
        return steps

    def _beyond_window(self, seq: int) -> bool:
        newest = max(self._held, default=self.next_seq - 1)
        return seq - newest > self.max_held

    def _skip_to_first_held(self) -> list[Step]:
        first = min(self._held)
        steps: list[Step] = [Gap(self.next_seq, first - self.next_seq)]
        if len(self._skipped) > 1024:
            self._skipped.clear()
        self._skipped.update(range(self.next_seq, min(first, self.next_seq + 64)))
        self.next_seq = first
        steps.extend(self._release_consecutive())
        self._note_fed()
        return steps

    def _release_consecutive(self) -> list[Step]:
        steps: list[Step] = []
        while self.next_seq in self._held:
            data = self._held.pop(self.next_seq)
            del self._held_since[self.next_seq]
            self._held_bytes -= len(data)
            steps.append(Blob(self.next_seq, data))
            self.next_seq += 1
        return steps

    def _note_fed(self) -> None:
        if self._fed_any:
            return
        self._fed_any = True
        # Blobs held before the session had a position are judged by the window now: each
        # must be within it of the one before, starting from the blob just fed.
        newest = self.next_seq - 1
        for seq in sorted(self._held):
            if seq - newest > self.max_held:
                self._held_bytes -= len(self._held.pop(seq))
                del self._held_since[seq]
            else:
                newest = seq
