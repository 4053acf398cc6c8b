"""Who may call the service, and how much: token, browser origins, rates, caps, overload."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from aiohttp.test_utils import TestClient

from isweep_backend.decode import SAMPLE_RATE
from isweep_backend.keys import METRICS, RUNTIME
from tests.audio_tools import wav_bytes
from tests.conftest import ClientFactory, chunk_body, load_synthetic

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
    registry = client.app[RUNTIME].registry
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
    scheduler = client.app[RUNTIME].scheduler
    assert scheduler is not None
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


async def _raw_request(client: TestClient[Any, Any], head: bytes) -> bytes:
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
