"""Every session's memory is given back: a thousand sessions that go idle are evicted."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from isweep_backend.keys import METRICS
from isweep_backend.session import Session
from isweep_backend.timeline import SAMPLE_RATE
from tests.audio_tools import cut_blobs, encode_opus_stream
from tests.conftest import ClientFactory, chunk_body
from tests.support import service_of

SESSIONS = 1000


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
async def test_a_thousand_idle_sessions_are_evicted_and_their_memory_returns(
    make_client: ClientFactory,
) -> None:
    client = await make_client(
        max_sessions=SESSIONS,
        max_sessions_per_user=SESSIONS,
        new_sessions_per_minute_per_client=0.0,  # a thousand sessions from one address
        new_sessions_per_minute_per_token=0.0,
        session_ttl_seconds=600.0,
        response_wait_seconds=0.0,
    )
    rng = np.random.default_rng(1)
    noise = (0.001 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32)
    first_blob = cut_blobs(encode_opus_stream(noise, SAMPLE_RATE), 1.0)[0]
    registry = service_of(client.app).registry
    gc.collect()
    baseline = rss_bytes()
    refs: list[weakref.ref[Session]] = []
    for tab in range(SESSIONS):
        resp = await client.post("/asr/stream", json=chunk_body(first_blob, 0, tab_id=tab))
        assert resp.status == 200
        session = registry.get(("user-1", tab))
        assert session is not None and session.ring.end > 0
        refs.append(weakref.ref(session))
    del session
    peak = rss_bytes()
    assert len(registry) == SESSIONS
    # Ten minutes on: every session has been idle past its TTL. (The evictor task that calls
    # this every few seconds is exercised in test_api with a short TTL.)
    assert registry.evict_idle(now=time.monotonic() + 601.0) == SESSIONS
    assert len(registry) == 0
    assert client.app[METRICS].sessions_evicted.labels("ttl")._value.get() == SESSIONS
    scheduler = service_of(client.app).scheduler
    for _ in range(600):  # queued passes of evicted sessions are dropped as they come up
        if scheduler.depth == 0 and scheduler.running == 0:
            break
        await asyncio.sleep(0.05)
    gc.collect()
    assert not [r for r in refs if r() is not None], "evicted sessions are still referenced"
    registry.evict_idle()  # the evictor's next round, which hands freed memory back
    after = rss_bytes()
    grown = (after - baseline) / 2**20
    print(
        f"rss MB: baseline {baseline / 2**20:.1f}, 1000 sessions {peak / 2**20:.1f}, "
        f"after eviction {after / 2**20:.1f}"
    )
    assert grown < max(40.0, 0.25 * (peak - baseline) / 2**20), (baseline, peak, after)
