"""Token buckets: a steady rate with bursts, per key, with bounded memory."""

from __future__ import annotations

import pytest

from isweep_backend.ratelimit import (
    Caller,
    KeyedBuckets,
    SessionStartLimiter,
    address_key,
    retry_after_header,
)


def test_a_bucket_holds_a_minutes_worth_and_refills_at_the_rate() -> None:
    buckets = KeyedBuckets(per_minute=6.0)
    for _ in range(6):
        assert buckets.wait_seconds("a", 0.0) == 0.0
        buckets.charge("a", 0.0)
    assert buckets.wait_seconds("a", 0.0) == pytest.approx(10.0)  # a token every 10 s
    assert buckets.wait_seconds("a", 4.0) == pytest.approx(6.0)
    assert buckets.wait_seconds("a", 10.0) == 0.0
    assert buckets.wait_seconds("b", 0.0) == 0.0  # another key, its own bucket


def test_a_rate_of_zero_turns_the_limit_off() -> None:
    buckets = KeyedBuckets(per_minute=0.0)
    for _ in range(1000):
        buckets.charge("a", 0.0)
    assert buckets.wait_seconds("a", 0.0) == 0.0


def test_invented_keys_cannot_grow_memory_past_the_bound() -> None:
    buckets = KeyedBuckets(per_minute=1.0, max_keys=100)
    for i in range(10_000):
        buckets.charge(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(buckets._buckets) == 100


def test_ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("") == ""


def test_the_tighter_of_the_two_limits_says_how_long_to_wait() -> None:
    limiter = SessionStartLimiter(per_client_per_minute=60.0, per_token_per_minute=2.0)
    for address in ("192.0.2.1", "192.0.2.2"):
        caller = Caller(address, "bearer")
        assert limiter.wait_seconds(caller, 0.0) == ("client", 0.0)
        limiter.charge(caller, 0.0)
    # pytest.approx(30.0) equals a float at run time, which its type does not say.
    assert limiter.wait_seconds(Caller("192.0.2.3", "bearer"), 0.0) == (  # type: ignore[comparison-overlap]
        "token",
        pytest.approx(30.0),
    )


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert [retry_after_header(s) for s in (0.0, 0.2, 1.0, 19.01)] == ["1", "1", "1", "20"]
