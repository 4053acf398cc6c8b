from __future__ import annotations

import numpy as np

from isweep_backend.ringbuffer import PcmRingBuffer


def test_clock_counts_every_sample_across_trims_and_wraps() -> None:
    ring = PcmRingBuffer(10)
    ring.append(np.arange(6, dtype=np.float32))
    ring.trim_to(4)
    ring.append(np.arange(6, 13, dtype=np.float32))
    assert (ring.start, ring.end) == (4, 13)
    np.testing.assert_array_equal(ring.window(), np.arange(4, 13, dtype=np.float32))
    np.testing.assert_array_equal(ring.window(10), np.arange(10, 13, dtype=np.float32))


def test_full_buffer_overwrites_the_oldest_and_reports_it() -> None:
    ring = PcmRingBuffer(8)
    assert ring.append(np.arange(6, dtype=np.float32)) == 0
    assert ring.append(np.arange(6, 11, dtype=np.float32)) == 3
    np.testing.assert_array_equal(ring.window(), np.arange(3, 11, dtype=np.float32))
    assert ring.append(np.arange(11, 31, dtype=np.float32)) == 20
    np.testing.assert_array_equal(ring.window(), np.arange(23, 31, dtype=np.float32))
    assert ring.overwritten_samples == 23 and len(ring) == 8 and ring.nbytes == 32
