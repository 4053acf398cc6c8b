"""Fixed-capacity float32 PCM buffer whose clock is the count of samples ever appended."""

from __future__ import annotations

import numpy as np

from .timeline import Pcm


class PcmRingBuffer:
    """Keeps the newest `capacity` samples of a stream, addressed by absolute sample index.

    `end` is the session clock: every sample ever appended counts, so times never restart when
    old audio is trimmed or overwritten. The array is allocated zeroed and lazily, so an idle
    session costs only the pages its audio touched.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._data = np.zeros(capacity, dtype=np.float32)
        self._start = 0  # absolute index of the oldest kept sample
        self._end = 0  # absolute index one past the newest sample
        self.overwritten_samples = 0  # samples lost to a full buffer, not to trimming

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return self._end

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def nbytes(self) -> int:
        return len(self) * 4

    def append(self, pcm: Pcm) -> int:
        """Append samples; returns how many samples a full buffer could not keep."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        lost = max(0, len(self) + pcm.size - self.capacity)
        kept = pcm[-self.capacity :]
        for offset, chunk in self._split_at_wrap(self._end + pcm.size - kept.size, kept):
            self._data[offset : offset + chunk.size] = chunk
        self._end += pcm.size
        self._start = max(self._start, self._end - self.capacity)
        self.overwritten_samples += lost
        return lost

    def start_at(self, absolute_sample: int) -> None:
        """Begin an empty buffer's clock at `absolute_sample` (a session that joins a capture
        mid-stream); the clock never moves back."""
        if self._end != self._start:
            raise ValueError("only an empty buffer's clock can be set")
        self._start = self._end = max(self._end, absolute_sample)

    def trim_to(self, absolute_sample: int) -> None:
        """Forget everything before `absolute_sample` (clamped to what is kept)."""
        self._start = min(max(self._start, absolute_sample), self._end)

    def window(self, from_sample: int | None = None) -> Pcm:
        """A copy of the samples from `from_sample` (default: the oldest kept) to the end."""
        begin = (
            self._start if from_sample is None else min(max(from_sample, self._start), self._end)
        )
        offset = begin % self.capacity
        length = self._end - begin
        if offset + length <= self.capacity:
            window: Pcm = self._data[offset : offset + length].copy()
            return window
        head = self._data[offset:]
        return np.concatenate([head, self._data[: length - head.size]])

    def _split_at_wrap(self, absolute: int, pcm: Pcm) -> list[tuple[int, Pcm]]:
        offset = absolute % self.capacity
        first = min(pcm.size, self.capacity - offset)
        parts = [(offset, pcm[:first])]
        if first < pcm.size:
            parts.append((0, pcm[first:]))
        return parts
