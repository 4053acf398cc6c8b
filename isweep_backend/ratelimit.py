"""Token buckets: per-session request limits, and the limit on starting sessions per caller."""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass

SECONDS_PER_MINUTE = 60.0
# Callers remembered at once; beyond this the least recently seen are forgotten (their next
# session starts with a full bucket), so invented addresses cannot grow memory. The per-token
# bucket still bounds the whole service.
MAX_TRACKED_CLIENTS = 4096


class TokenBucket:
    def __init__(self, rate_per_second: float, burst: float, now: float) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self._tokens = burst
        self._updated = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def seconds_until_token(self, now: float) -> float:
        """0 if a token is there now, else how long until one is."""
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self.rate)


@dataclass(frozen=True)
class Caller:
    """Who starts a session, as far as the limits can tell: the client's address and which
    credential it presented. Plain data, so nothing below the HTTP layer knows HTTP."""

    address: str
    token: str


def address_key(address: str) -> str:
    """IPv6 clients get a /64 each, so one host cannot pose as many by rotating its suffix."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class KeyedBuckets:
    """One bucket per key, `per_minute` tokens a minute with bursts of as many; a rate of 0
    turns the limit off."""

    def __init__(self, per_minute: float, max_keys: int = MAX_TRACKED_CLIENTS) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.per_minute / SECONDS_PER_MINUTE, self.per_minute, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key)
        return bucket

    def wait_seconds(self, key: str, now: float) -> float:
        """How long `key` must wait for a token; 0 if it may go now."""
        if self.per_minute <= 0:
            return 0.0
        return self._bucket(key, now).seconds_until_token(now)

    def charge(self, key: str, now: float) -> None:
        if self.per_minute > 0:
            self._bucket(key, now).take(now)


class SessionStartLimiter:
    """New sessions per client address and per token. A caller is checked before anything
    changes (a new capture replacing a session included) and charged only once its session
    is really created, so a refusal for another reason costs it nothing."""

    def __init__(self, per_client_per_minute: float, per_token_per_minute: float) -> None:
        self._per_client = KeyedBuckets(per_client_per_minute)
        self._per_token = KeyedBuckets(per_token_per_minute)

    def wait_seconds(self, caller: Caller, now: float) -> tuple[str, float]:
        """("client" or "token", seconds to wait) for the tighter limit; 0 s if none binds."""
        client = self._per_client.wait_seconds(address_key(caller.address), now)
        token = self._per_token.wait_seconds(caller.token, now)
        return ("client", client) if client >= token else ("token", token)

    def charge(self, caller: Caller, now: float) -> None:
        self._per_client.charge(address_key(caller.address), now)
        self._per_token.charge(caller.token, now)


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1, as Retry-After wants them."""
    return str(max(1, math.ceil(seconds)))
