from __future__ import annotations

from isweep_backend.reorder import Arrival, Blob, Gap, ReorderBuffer


def _seqs(steps: list[Blob | Gap]) -> list[object]:
    return [s.seq if isinstance(s, Blob) else ("gap", s.first_seq, s.count) for s in steps]


def test_in_order_blobs_pass_straight_through() -> None:
    r = ReorderBuffer(0, 2.0, 8)
    for seq in range(3):
        arrival, steps = r.offer(seq, b"x", now=seq)
        assert arrival is Arrival.IN_ORDER and _seqs(steps) == [seq]


def test_early_blob_is_held_until_the_gap_fills() -> None:
    r = ReorderBuffer(0, 2.0, 8)
    assert _seqs(r.offer(0, b"a", 0.0)[1]) == [0]
    arrival, steps = r.offer(2, b"c", 0.1)
    assert arrival is Arrival.EARLY and steps == []
    assert _seqs(r.offer(1, b"b", 0.2)[1]) == [1, 2]


def test_duplicate_seq_adds_nothing() -> None:
    r = ReorderBuffer(0, 2.0, 8)
    r.offer(0, b"a", 0.0)
    assert r.offer(0, b"a", 0.1) == (Arrival.DUPLICATE, [])
    r.offer(2, b"c", 0.2)
    assert r.offer(2, b"c", 0.3) == (Arrival.DUPLICATE, [])


def test_missing_seq_is_skipped_after_the_wait_and_late_arrival_is_ignored() -> None:
    r = ReorderBuffer(0, 2.0, 8)
    r.offer(0, b"a", 0.0)
    r.offer(2, b"c", 1.0)
    r.offer(3, b"d", 1.5)
    assert r.expire(2.9) == []
    assert _seqs(r.expire(3.0)) == [("gap", 1, 1), 2, 3]
    assert r.offer(1, b"b", 3.1) == (Arrival.LATE, [])


def test_too_many_held_blobs_skip_the_gap_at_once() -> None:
    r = ReorderBuffer(0, 60.0, 2)
    r.offer(0, b"a", 0.0)
    r.offer(2, b"c", 0.0)
    r.offer(3, b"d", 0.0)
    arrival, steps = r.offer(4, b"e", 0.0)
    assert arrival is Arrival.EARLY
    assert _seqs(steps) == [("gap", 1, 1), 2, 3, 4]


def test_held_blobs_are_bounded_in_bytes_too() -> None:
    r = ReorderBuffer(0, 60.0, 100, max_held_bytes=10)
    r.offer(0, b"a", 0.0)
    assert r.offer(2, b"x" * 6, 0.0) == (Arrival.EARLY, [])
    arrival, steps = r.offer(3, b"y" * 6, 0.0)
    assert arrival is Arrival.EARLY and _seqs(steps) == [("gap", 1, 1), 2, 3]
    assert r.held_bytes == 0
