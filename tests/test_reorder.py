from __future__ import annotations

import numpy as np

from isweep_backend.audio.decode import SessionDecoder
from isweep_backend.keys import METRICS
from isweep_backend.reorder import Arrival, Blob, Gap, ReorderBuffer
from tests.conftest import ClientFactory, chunk_body
from tests.support import service_of
from tests.test_chrome_blobs import BLOBS, FIRST_STREAM, RESTART, decode_in_order


def _seqs(steps: list[Blob | Gap]) -> list[object]:
    return [s.seq if isinstance(s, Blob) else ("gap", s.first_seq, s.count) for s in steps]


def test_in_order_blobs_pass_straight_through() -> None:
    r = ReorderBuffer(0, 2.0, 8)
    for seq in range(3):
        arrival, steps = r.offer(seq, b"x", now=seq)
        assert arrival is Arrival.IN_ORDER and _seqs(steps) == [seq]


def test_real_blobs_shuffled_two_seconds_decode_exactly_as_in_order() -> None:
    """Every blob decoded, in seq order, once: the audio of a stream whose blobs arrive up to
    2 s out of order (windows of 3 reversed, and duplicated) is the audio sent in order,
    sample for sample."""
    order = [
        seq for start in range(0, len(FIRST_STREAM), 3) for seq in (start + 2, start, start + 1)
    ]
    order = [seq for seq in order if seq < len(FIRST_STREAM)]
    r = ReorderBuffer(0, 2.0, 8)
    decoder = SessionDecoder()
    fed: list[int] = []
    pcm: list[np.ndarray] = []
    for n, seq in enumerate(order + order[:3]):
        for step in r.offer(seq, FIRST_STREAM[seq], now=n)[1]:
            assert isinstance(step, Blob)
            fed.append(step.seq)
            pcm.append(decoder.decode(step.data).pcm)
    assert fed == list(range(len(FIRST_STREAM)))
    assert np.array_equal(np.concatenate(pcm), np.concatenate(decode_in_order()))


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


def test_a_blob_beyond_the_hold_window_is_dropped_and_the_real_one_is_fed() -> None:
    r = ReorderBuffer(0, 2.0, 4)
    r.offer(0, b"real-0", 0.0)
    # A stale blob of an earlier capture: far ahead of anything this stream has sent.
    assert r.offer(10, b"stale", 0.1) == (Arrival.FAR_AHEAD, [])
    assert r.held == 0 and r.gap_deadline() is None
    fed = []
    for seq in range(1, 12):
        arrival, steps = r.offer(seq, f"real-{seq}".encode(), float(seq))
        assert arrival is Arrival.IN_ORDER
        fed.extend(steps)
    assert [s.data for s in fed if isinstance(s, Blob)] == [
        f"real-{seq}".encode() for seq in range(1, 12)
    ]


def test_the_window_is_max_held_seqs_past_the_newest_blob_seen() -> None:
    r = ReorderBuffer(0, 2.0, 4)
    r.offer(0, b"a", 0.0)
    assert r.offer(5, b"f", 0.0)[0] is Arrival.FAR_AHEAD  # 5 past the newest, 0
    assert r.offer(4, b"e", 0.0)[0] is Arrival.EARLY
    # A burst after a lost blob stays close to its own newest blob: all of it is kept.
    assert r.offer(8, b"i", 0.0)[0] is Arrival.EARLY
    assert r.offer(13, b"n", 0.0)[0] is Arrival.FAR_AHEAD


def test_a_burst_after_a_lost_blob_skips_the_gap_once_too_many_are_held() -> None:
    r = ReorderBuffer(0, 60.0, 4)
    r.offer(0, b"a", 0.0)
    steps: list[Blob | Gap] = []
    arrivals = []
    for seq in range(2, 12):  # seq 1 is lost; the rest come in a burst
        arrival, ready = r.offer(seq, b"x", 0.0)
        arrivals.append(arrival)
        steps.extend(ready)
    assert Arrival.FAR_AHEAD not in arrivals
    assert _seqs(steps) == [("gap", 1, 1), *range(2, 12)]


def test_in_order_arrivals_do_not_extend_the_wait_of_a_held_blob() -> None:
    r = ReorderBuffer(0, 2.0, 8)
    r.offer(0, b"a", 0.0)
    r.offer(5, b"f", 0.5)  # held: seqs 1 to 4 are missing
    # Traffic keeps flowing in order, but 5 waits no longer than its own 2 s.
    assert _seqs(r.offer(1, b"b", 1.0)[1]) == [1]
    assert r.gap_deadline() == 2.5
    assert _seqs(r.offer(2, b"c", 2.0)[1]) == [2]
    assert r.gap_deadline() == 2.5
    assert _seqs(r.expire(2.5)) == [("gap", 3, 2), 5]
    assert r.offer(3, b"d", 2.6) == (Arrival.LATE, [])


def test_each_held_blob_is_given_up_on_after_its_own_wait() -> None:
    r = ReorderBuffer(0, 2.0, 8)
    r.offer(0, b"a", 0.0)
    r.offer(3, b"d", 0.0)
    r.offer(5, b"f", 1.0)
    assert _seqs(r.expire(2.0)) == [("gap", 1, 2), 3]
    assert r.gap_deadline() == 3.0
    assert _seqs(r.expire(3.0)) == [("gap", 4, 1), 5]


def test_a_session_that_joined_midway_holds_its_first_blob_until_the_wait_ends() -> None:
    # Nothing fed yet: the session has no position, so a high first seq is not far ahead.
    r = ReorderBuffer(0, 2.0, 4)
    assert r.offer(50, b"x", 0.0) == (Arrival.EARLY, [])
    assert _seqs(r.expire(2.0)) == [("gap", 0, 50), 50]


def test_blobs_held_before_the_first_feed_are_judged_by_the_window_once_it_starts() -> None:
    r = ReorderBuffer(0, 2.0, 4)
    assert r.offer(40, b"stale", 0.0)[0] is Arrival.EARLY
    assert _seqs(r.offer(0, b"a", 0.1)[1]) == [0]
    assert r.held == 0 and r.held_bytes == 0 and r.gap_deadline() is None


async def test_a_stale_far_ahead_blob_through_http_does_not_replace_the_real_one(
    make_client: ClientFactory,
) -> None:
    # A long wait, so only the window (4 seqs) can keep the stale blob out; no waiting on
    # passes, and no trimming, so the whole audio of both sessions can be compared.
    client = await make_client(
        reorder_wait_seconds=30.0,
        max_held_blobs=4,
        response_wait_seconds=0.0,
        trim_seconds=20.0,
    )
    real = BLOBS[:RESTART]  # seqs 0-9 of one real Chrome recording
    stale = real[2]  # bytes from elsewhere in the stream, claiming to be seq 7

    async def send(tab_id: int, seq: int, blob: bytes) -> None:
        resp = await client.post("/asr/stream", json=chunk_body(blob, seq, tab_id=tab_id))
        assert resp.status == 200

    for seq, blob in enumerate(real):
        await send(1, seq, blob)  # the clean run
        if seq == 1:
            await send(2, 7, stale)
        await send(2, seq, blob)
    registry = service_of(client.app).registry
    clean, attacked = registry.get(("user-1", 1)), registry.get(("user-1", 2))
    assert clean is not None and attacked is not None
    assert attacked.ring.end == clean.ring.end > 8 * 16000
    assert attacked.ring.start == clean.ring.start == 0
    assert np.array_equal(attacked.ring.window(), clean.ring.window())
    events = client.app[METRICS].seq_events
    assert events.labels("far_ahead")._value.get() == 1
    assert events.labels("duplicate")._value.get() == 0
