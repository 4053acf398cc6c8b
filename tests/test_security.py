"""Who may call the service, and how much: token, browser origins, rates, caps, overload."""

from __future__ import annotations

import asyncio

import numpy as np
from aiohttp import ClientResponse

from isweep_backend.keys import METRICS
from isweep_backend.timeline import SAMPLE_RATE
from tests.audio_tools import cut_blobs, encode_opus_stream, wav_bytes
from tests.conftest import Client, ClientFactory, chunk_body, load_synthetic
from tests.support import service_of
from tests.test_chrome_blobs import BLOBS, RESTART

QUIET = wav_bytes(np.zeros(SAMPLE_RATE // 4, dtype=np.float32))
EXTENSION = "chrome-extension://abcdefghijklmnopabcdefghijklmnop"


async def test_token_is_required_everywhere_but_healthz(make_client: ClientFactory) -> None:
    client = await make_client(auth_token="s3cret-token")
    assert (await client.get("/healthz")).status == 200
    refused = await client.post("/asr/stream", json=chunk_body(QUIET, 0))
    assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await refused.json())["error"]["code"] == "unauthorized"
    wrong = await client.post(
        "/asr/stream", json=chunk_body(QUIET, 0), headers={"Authorization": "Bearer s3cret-tokeX"}
    )
    assert wrong.status == 401
    right = await client.post(
        "/asr/stream", json=chunk_body(QUIET, 0), headers={"Authorization": "Bearer s3cret-token"}
    )
    assert right.status == 200
    assert (await client.get("/readyz")).status == 401
    assert (await client.get("/metrics")).status == 200


async def test_metrics_can_require_the_token(make_client: ClientFactory) -> None:
    client = await make_client(auth_token="t", metrics_require_token=True)
    assert (await client.get("/metrics")).status == 401
    ok = await client.get("/metrics", headers={"Authorization": "Bearer t"})
    assert ok.status == 200


async def test_extension_origin_gets_cors_and_preflight_answers(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    preflight = await client.options(
        "/asr/stream",
        headers={
            "Origin": EXTENSION,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == EXTENSION
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in preflight.headers["Access-Control-Allow-Headers"]
    resp = await client.post(
        "/asr/stream", json=chunk_body(QUIET, 0), headers={"Origin": EXTENSION}
    )
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == EXTENSION


async def test_other_web_origins_are_refused_and_push_no_audio(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    # A page can send a "simple" text/plain POST without a preflight: it must not get in.
    resp = await client.post(
        "/asr/stream",
        data=b'{"user_id": "u"}',
        headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    preflight = await client.options(
        "/asr/stream",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 403
    registry = service_of(client.app).registry
    assert registry is not None and len(registry) == 0


async def test_a_session_sending_too_fast_gets_429(make_client: ClientFactory) -> None:
    client = await make_client(max_requests_per_second=2.0)
    statuses = []
    for seq in range(8):
        resp = await client.post("/asr/stream", json=chunk_body(QUIET, seq))
        statuses.append(resp.status)
    assert statuses[0] == 200 and 429 in statuses
    limited = await client.post("/asr/stream", json=chunk_body(QUIET, 9))
    assert limited.status == 429 and limited.headers["Retry-After"]
    assert (await limited.json())["error"]["code"] == "rate_limited"


async def test_one_user_cannot_hold_more_than_its_sessions(make_client: ClientFactory) -> None:
    client = await make_client(max_sessions_per_user=2)
    for tab in (1, 2):
        ok = await client.post("/asr/stream", json=chunk_body(QUIET, 0, tab_id=tab))
        assert ok.status == 200
    third = await client.post("/asr/stream", json=chunk_body(QUIET, 0, tab_id=3))
    assert third.status == 429
    assert (await third.json())["error"]["code"] == "too_many_sessions"
    other_user = await client.post(
        "/asr/stream", json=chunk_body(QUIET, 0, user_id="user-2", tab_id=3)
    )
    assert other_user.status == 200


async def test_new_sessions_are_shed_with_503_while_recognition_is_behind(
    make_client: ClientFactory,
) -> None:
    client = await make_client(
        inference_workers=1, overload_pass_cycle_seconds=0.05, response_wait_seconds=0.0
    )
    speech = wav_bytes(load_synthetic("long").pcm[: 12 * SAMPLE_RATE])
    scheduler = service_of(client.app).scheduler
    for tab in (1, 2, 3):  # one pass runs, the others queue behind it
        assert (
            await client.post("/asr/stream", json=chunk_body(speech, 0, tab_id=tab))
        ).status == 200
    for _ in range(200):
        if scheduler.overloaded():
            break
        await asyncio.sleep(0.01)
    shed = await client.post("/asr/stream", json=chunk_body(QUIET, 0, tab_id=9))
    assert shed.status == 503 and shed.headers["Retry-After"]
    assert (await shed.json())["error"]["code"] == "overloaded"
    assert client.app[METRICS].requests_shed.labels("overloaded")._value.get() == 1
    # Running sessions are not refused: they degrade to fewer, longer passes instead.
    going_on = await client.post("/asr/stream", json=chunk_body(QUIET, 1, tab_id=1))
    assert going_on.status == 200
    assert scheduler.min_new_samples() > 0.5 * SAMPLE_RATE


async def test_a_page_served_by_the_service_itself_may_call_it(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    own = f"http://{client.server.host}:{client.server.port}"
    resp = await client.post("/asr/stream", json=chunk_body(QUIET, 0), headers={"Origin": own})
    assert resp.status == 200


async def test_a_rebound_dns_name_is_not_taken_for_the_service_itself(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    port = client.server.port
    resp = await client.post(
        "/asr/stream",
        json=chunk_body(QUIET, 0),
        headers={"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"},
    )
    assert resp.status == 403


async def _raw_request(client: Client, head: bytes) -> bytes:
    """One request written byte for byte, as no well-behaved client would send it."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + b"Connection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


async def test_a_non_utf8_authorization_header_gets_401(make_client: ClientFactory) -> None:
    client = await make_client(auth_token="s3cret-token")
    answer = await _raw_request(
        client, b"GET /readyz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
    assert b'"unauthorized"' in answer


async def test_error_answers_to_an_allowed_origin_carry_cors_and_expose_retry_after(
    make_client: ClientFactory,
) -> None:
    client = await make_client(auth_token="t", max_sessions=1)
    auth = {"Authorization": "Bearer t", "Origin": EXTENSION}
    errors = {
        400: await client.post("/asr/stream", data=b"[", headers=auth),
        401: await client.post(
            "/asr/stream", json=chunk_body(QUIET, 0), headers={"Origin": EXTENSION}
        ),
        404: await client.get("/nowhere", headers=auth),
    }
    assert (await client.post("/asr/stream", json=chunk_body(QUIET, 0), headers=auth)).status == 200
    errors[503] = await client.post(
        "/asr/stream", json=chunk_body(QUIET, 0, tab_id=99), headers=auth
    )
    for status, resp in errors.items():
        assert resp.status == status
        assert resp.headers.get("Access-Control-Allow-Origin") == EXTENSION, status
        exposed = resp.headers.get("Access-Control-Expose-Headers", "")
        assert "Retry-After" in exposed, status
        assert (await resp.json())["error"]["code"]
    assert errors[503].headers["Retry-After"]


# --- starting sessions -------------------------------------------------------------------


def _retry_after(resp: ClientResponse) -> int:
    return int(resp.headers["Retry-After"])


async def test_new_sessions_from_one_address_beyond_the_rate_get_429_with_retry_after(
    make_client: ClientFactory,
) -> None:
    client = await make_client(new_sessions_per_minute_per_client=3.0)
    for tab in range(3):  # a minute's worth at once
        assert (
            await client.post("/asr/stream", json=chunk_body(QUIET, 0, tab_id=tab))
        ).status == 200
    refused = await client.post(
        "/asr/stream", json=chunk_body(QUIET, 0, user_id="someone-else", tab_id=9)
    )
    assert refused.status == 429
    assert (await refused.json())["error"]["code"] == "session_start_rate_limited"
    assert 15 <= _retry_after(refused) <= 20  # one session every 20 s
    registry = service_of(client.app).registry
    assert registry is not None and len(registry) == 3
    # Sessions already running are not slowed down by it.
    assert (await client.post("/asr/stream", json=chunk_body(QUIET, 1, tab_id=0))).status == 200
    shed = client.app[METRICS].requests_shed.labels("session_start_rate")._value.get()
    assert shed == 1


async def test_new_capture_churn_is_limited_before_it_replaces_the_session(
    make_client: ClientFactory,
) -> None:
    client = await make_client(new_sessions_per_minute_per_client=2.0)
    # Two real Chrome stream headers: each seq 0 with a header unlike the last starts anew.
    headers = [BLOBS[0], BLOBS[RESTART]]
    assert (await client.post("/asr/stream", json=chunk_body(headers[0], 0))).status == 200
    assert (await client.post("/asr/stream", json=chunk_body(headers[1], 0))).status == 200
    registry = service_of(client.app).registry
    live = registry.get(("user-1", 7))
    churn = await client.post("/asr/stream", json=chunk_body(headers[0], 0))
    assert churn.status == 429 and _retry_after(churn) >= 1
    # Refused before anything changed: the session it would have replaced is still there.
    assert registry.get(("user-1", 7)) is live and live is not None and not live.closed
    evicted = client.app[METRICS].sessions_evicted.labels("new_capture")._value.get()
    assert evicted == 1


async def test_callers_of_the_token_share_its_bucket_whatever_their_address(
    make_client: ClientFactory,
) -> None:
    client = await make_client(
        auth_token="t",
        trusted_proxies="127.0.0.1",
        new_sessions_per_minute_per_token=4.0,
    )
    statuses = []
    for tab in range(6):
        headers = {"Authorization": "Bearer t", "X-Forwarded-For": f"203.0.113.{tab}"}
        resp = await client.post(
            "/asr/stream", json=chunk_body(QUIET, 0, tab_id=tab), headers=headers
        )
        statuses.append(resp.status)
    assert statuses == [200] * 4 + [429] * 2


async def test_behind_a_trusted_proxy_each_client_address_has_its_own_bucket(
    make_client: ClientFactory,
) -> None:
    client = await make_client(trusted_proxies="127.0.0.1", new_sessions_per_minute_per_client=1.0)

    async def start(tab: int, forwarded: str) -> int:
        body = chunk_body(QUIET, 0, tab_id=tab)
        resp = await client.post("/asr/stream", json=body, headers={"X-Forwarded-For": forwarded})
        return resp.status

    # The proxy appends the address it saw; what the client wrote before it is not trusted.
    assert await start(1, "198.51.100.1") == 200
    assert await start(2, "198.51.100.2") == 200
    assert await start(3, "203.0.113.9, 198.51.100.1") == 429
    # One IPv6 host cannot pose as many by rotating its interface bits.
    assert await start(4, "2001:db8::1") == 200
    assert await start(5, "2001:db8::2") == 429


async def test_a_forwarded_for_header_is_ignored_from_an_untrusted_peer(
    make_client: ClientFactory,
) -> None:
    client = await make_client(new_sessions_per_minute_per_client=1.0)
    statuses = []
    for tab in range(2):
        resp = await client.post(
            "/asr/stream",
            json=chunk_body(QUIET, 0, tab_id=tab),
            headers={"X-Forwarded-For": f"198.51.100.{tab}"},
        )
        statuses.append(resp.status)
    assert statuses == [200, 429]


async def test_the_defaults_never_bother_a_user_with_a_few_tabs(make_client: ClientFactory) -> None:
    client = await make_client()
    # Two quiet recordings (no passes to queue): each seq 0 unlike the last starts anew.
    headers = [
        cut_blobs(encode_opus_stream(np.zeros(SAMPLE_RATE, np.float32) + level, SAMPLE_RATE))[0]
        for level in (0.0, 0.001)
    ]
    assert headers[0] != headers[1]
    # Eight tabs (the per-user cap), each capturing three times in a row within the minute.
    for capture in range(3):
        for tab in range(8):
            body = chunk_body(headers[capture % 2], 0, tab_id=tab)
            assert (await client.post("/asr/stream", json=body)).status == 200
    evicted = client.app[METRICS].sessions_evicted.labels("new_capture")._value.get()
    assert evicted == 16


async def test_a_start_refused_for_another_reason_costs_no_token(
    make_client: ClientFactory,
) -> None:
    client = await make_client(new_sessions_per_minute_per_client=2.0, max_sessions_per_user=1)
    assert (await client.post("/asr/stream", json=chunk_body(QUIET, 0, tab_id=1))).status == 200
    for tab in range(2, 6):
        refused = await client.post("/asr/stream", json=chunk_body(QUIET, 0, tab_id=tab))
        assert (await refused.json())["error"]["code"] == "too_many_sessions"
    other = await client.post("/asr/stream", json=chunk_body(QUIET, 0, user_id="u2", tab_id=1))
    assert other.status == 200
