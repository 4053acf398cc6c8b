"""Scale-out with real parts: real HAProxy (ops/haproxy/haproxy.cfg, Debian's 2.6) in front of
real replicas (`python -m isweep_backend`), fed real Chrome MediaRecorder blobs
(tests/fixtures/chrome) on loopback. Every replica names itself in the X-Isweep-Instance
header, so where HAProxy sent each request is seen from outside, as an operator would.

A session moves mid-speech three ways: its replica is killed (SIGKILL), stopped (SIGTERM) or
a fourth replica takes its share of the ring. Each time the client must see what the extension
needs: only 200s, words resuming within 3 s of audio, no segment it would drop as going back
in time, no word told twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml

from bench.service import free_port
from isweep_backend.api import INSTANCE_HEADER
from isweep_backend.logging import configure_logging
from isweep_backend.registry import STALE_SESSION_SECONDS
from tests.conftest import ClientFactory, chunk_body
from tests.test_streaming import normalise, wer

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_DIR = ROOT / "ops" / "haproxy"
CHROME = ROOT / "tests" / "fixtures" / "chrome"
MANIFEST: dict[str, Any] = json.loads((CHROME / "blobs.json").read_text())
BLOBS = [(CHROME / entry["file"]).read_bytes() for entry in MANIFEST["blobs"]]
SENT_AT = [float(entry["sent_at_seconds"]) for entry in MANIFEST["blobs"]]
PAUSES: dict[str, Any] = json.loads((ROOT / "tests" / "fixtures" / "pauses.json").read_text())
# The first stream holds the first two sentences (to 8.30 s) and the pause after them.
REFERENCE_TEXT = " ".join(s["text"] for s in PAUSES["sentences"][:2])
REFERENCE_UNTIL_SECONDS = 9.0
DRAIN_SECONDS = 30.0
QUIET_SECONDS = 8.0
BUFFER_BYTES = 65536  # tune.bufsize in haproxy.cfg
# A replica is killed or stopped this long after a blob was sent: its request is in flight
# (a replica answers within response_wait_seconds, 0.4 s).
EVENT_DELAY_SECONDS = 0.15


def haproxy_binary() -> str:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("haproxy is not installed: run ops/install-test-deps.sh")
    return path


def first_stream() -> list[tuple[int, bytes, float]]:
    """(seq, blob, seconds after the capture began) of the recording's first WebM stream, as
    the extension sends them: both sentences, then 0.9 s of silence that ends the second."""
    restart = MANIFEST["restart_seq"]
    return [(seq, BLOBS[seq], SENT_AT[seq]) for seq in range(restart - 1)]


def whole_capture() -> list[tuple[int, bytes, float]]:
    """The whole recording as the extension sends it: the first stream, then (the blob
    `stop()` flushed is not sent) the new stream's first 2 s blob as the next seq, with the
    third sentence's first half."""
    restart = MANIFEST["restart_seq"]
    return [*first_stream(), (restart - 1, BLOBS[restart], SENT_AT[restart])]


def body(user_id: str, tab_id: int, seq: int, blob: bytes) -> bytes:
    return json.dumps(chunk_body(blob, seq, user_id, tab_id)).encode()


def post(url: str, data: bytes, token: str = "") -> tuple[int, str | None, Any]:
    """(status, the replica that answered, JSON answer) of one POST /asr/stream."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}/asr/stream", data=data, headers=headers)
    timeout = 30.0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.headers.get(INSTANCE_HEADER), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        # HAProxy's own 502/503 pages are HTML: keep them readable in a failure message.
        answer = json.loads(text) if exc.headers.get_content_type() == "application/json" else text
        return exc.code, exc.headers.get(INSTANCE_HEADER), answer


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def ready(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
        return bool(resp.status == 200)


# --- the cluster: replicas, servers.sh, HAProxy in master-worker mode --------------------------


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    tmp: Path
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    replicas: list[Replica] = field(default_factory=list)
    haproxy: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.tmp / "haproxy.sock"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ISWEEP_")}
        env.update(
            HF_HUB_OFFLINE="1",
            ISWEEP_HAPROXY_BIND=f"127.0.0.1:{self.port}",
            ISWEEP_HAPROXY_METRICS_BIND=f"127.0.0.1:{self.metrics_port}",
            ISWEEP_HAPROXY_SOCKET=str(self.socket_path),
            # Three replicas share two cores: one single-thread pass at a time each.
            ISWEEP_INFERENCE_WORKERS="1",
            ISWEEP_CPU_THREADS="1",
            # Shedding new sessions is tested on its own (test_api, bench); here a busy shared
            # 2-core machine must not turn a routing check into a 503 overloaded.
            ISWEEP_OVERLOAD_PASS_CYCLE_SECONDS="10",
            ISWEEP_LOG_FORMAT="json",
        )
        return env

    def start_replica(self) -> Replica:
        name, port = f"replica{len(self.replicas) + 1}", free_port()
        replica = Replica(name, port, self.spawn(port, name))
        self.replicas.append(replica)
        return replica

    def spawn(self, port: int, name: str) -> subprocess.Popen[bytes]:
        env = {**self.env(), "ISWEEP_PORT": str(port), "ISWEEP_INSTANCE": name}
        with (self.tmp / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "isweep_backend"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        return proc

    def write_servers(self) -> None:
        addresses = [f"127.0.0.1:{r.port}" for r in self.replicas]
        servers = subprocess.run(
            [str(HAPROXY_DIR / "servers.sh"), *addresses],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (self.tmp / "servers.cfg").write_text(servers)

    def start_haproxy(self) -> None:
        self.write_servers()
        command = [haproxy_binary(), "-W", "-db"]
        command += ["-f", str(HAPROXY_DIR / "haproxy.cfg"), "-f", str(self.tmp / "servers.cfg")]
        with (self.tmp / "haproxy.log").open("ab") as log:
            self.haproxy = subprocess.Popen(
                command, env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )

    def reload(self) -> None:
        """Regenerate the servers and reload: the master starts a worker on the new config,
        the old one finishes its requests in flight (HAProxy's documented seamless reload)."""
        assert self.haproxy is not None
        self.write_servers()
        self.haproxy.send_signal(signal.SIGUSR2)

    def runtime_api(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers_up(self) -> set[str]:
        """Servers of the `replicas` backend that HAProxy's health checks see UP."""
        up = set()
        for line in self.runtime_api("show stat").splitlines():
            cells = line.split(",")
            if (
                len(cells) > 17
                and cells[0] == "replicas"
                and cells[17] == "UP"
                and cells[1] != "BACKEND"
            ):
                up.add(cells[1])
        return up

    def retries(self) -> tuple[int, int]:
        """(retries, redispatches) of the `replicas` backend since HAProxy (re)started."""
        for line in self.runtime_api("show stat").splitlines():
            cells = line.split(",")
            if len(cells) > 16 and cells[0] == "replicas" and cells[1] == "BACKEND":
                return int(cells[15] or 0), int(cells[16] or 0)
        return 0, 0

    def wait_all_up(self, timeout: float = 90.0) -> None:
        names = {r.name for r in self.replicas}
        for replica in self.replicas:
            wait_until(lambda r=replica: ready(r.url), timeout, f"{replica.name} ready")
        wait_until(lambda: self.servers_up() == names, 30, f"HAProxy to see {sorted(names)} UP")

    def stop(self) -> None:
        procs = [r.proc for r in self.replicas] + ([self.haproxy] if self.haproxy else [])
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    haproxy_binary()
    cluster = Cluster(tmp_path_factory.mktemp("scaleout"))
    try:
        for _ in range(3):
            cluster.start_replica()
        cluster.start_haproxy()
        cluster.wait_all_up()
        yield cluster
    finally:
        cluster.stop()


# --- every replica names itself ------------------------------------------------------------


async def test_every_answer_names_the_replica_and_readyz_reports_it(
    make_client: ClientFactory,
) -> None:
    client = await make_client(instance="replica-7")
    ready_resp = await client.get("/readyz")
    assert (await ready_resp.json())["instance"] == "replica-7"
    answers = [
        ready_resp,
        await client.get("/healthz"),
        await client.get("/no/such/route"),
        await client.post("/asr/stream", data=b"{not json"),
        await client.post("/asr/stream", json=chunk_body(BLOBS[0], 0)),
    ]
    assert [r.status for r in answers] == [200, 200, 404, 400, 200]
    assert {r.headers[INSTANCE_HEADER] for r in answers} == {"replica-7"}
    refused = await (await make_client(instance="replica-7", auth_token="s3cret")).get("/readyz")
    assert refused.status == 401 and refused.headers[INSTANCE_HEADER] == "replica-7"


async def test_the_default_instance_is_the_host_name_and_port(make_client: ClientFactory) -> None:
    client = await make_client(port=8123)
    resp = await client.get("/healthz")
    assert resp.headers[INSTANCE_HEADER] == f"{socket.gethostname()}:8123"


def test_every_log_line_names_the_replica() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream, instance="replica-7")
    try:
        structlog.get_logger("isweep_backend.test").info("chunk_answered", seq=3)
        logging.getLogger("aiohttp.server").warning("a library's record")
    finally:
        configure_logging("warning", "json")  # as tests/conftest.py has it
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    assert {line["instance"] for line in lines} == {"replica-7"}


# --- HAProxy's configuration -----------------------------------------------------------------


def test_haproxy_accepts_the_config_with_generated_servers(tmp_path: Path) -> None:
    servers = subprocess.run(
        [str(HAPROXY_DIR / "servers.sh"), "127.0.0.1:8101", "127.0.0.1:8102"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert servers.splitlines() == [
        "backend replicas from replica-pool",
        "  server replica1 127.0.0.1:8101 id 1",
        "  server replica2 127.0.0.1:8102 id 2",
    ]
    (tmp_path / "servers.cfg").write_text(servers)
    env = {
        **os.environ,
        "ISWEEP_HAPROXY_BIND": "127.0.0.1:8001",
        "ISWEEP_HAPROXY_METRICS_BIND": "127.0.0.1:8405",
        "ISWEEP_HAPROXY_SOCKET": str(tmp_path / "sock"),
    }
    for servers_file in (tmp_path / "servers.cfg", HAPROXY_DIR / "servers.compose.cfg"):
        check = subprocess.run(
            [
                haproxy_binary(),
                "-c",
                "-f",
                str(HAPROXY_DIR / "haproxy.cfg"),
                "-f",
                str(servers_file),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert "Configuration file is valid" in check.stdout + check.stderr


@pytest.mark.slow
def test_haproxy_exports_each_replicas_state_as_the_alert_reads_it(cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{cluster.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    for replica in cluster.replicas:
        labels = f'proxy="replicas",server="{replica.name}"'
        assert f'haproxy_server_status{{{labels},state="UP"}} 1' in text
        assert f'haproxy_server_status{{{labels},state="DOWN"}} 0' in text
    groups = yaml.safe_load((ROOT / "ops" / "alerts.yml").read_text())["groups"]
    rule = next(
        r for g in groups for r in g["rules"] if r.get("alert") == "IsweepReplicaOutOfRotation"
    )
    assert 'haproxy_server_status{proxy="replicas", state="DOWN"}' in rule["expr"]


# --- affinity --------------------------------------------------------------------------------


# The extension drops a segment that ends more than this before the last one it kept.
BACKWARDS_TOLERANCE_SECONDS = 0.25


@dataclass
class Capture:
    user_id: str
    tab_id: int
    statuses: list[int] = field(default_factory=list)
    instances: list[str | None] = field(default_factory=list)
    words: list[dict[str, Any]] = field(default_factory=list)
    # The replica that delivered each word, in the order the client received them.
    word_instances: list[str | None] = field(default_factory=list)
    # Segments the extension would drop: they end too far before the last one it kept.
    dropped: list[dict[str, Any]] = field(default_factory=list)
    last_kept_end: float | None = None

    def record(self, status: int, instance: str | None, answer: Any) -> None:
        self.statuses.append(status)
        self.instances.append(instance)
        for segment in answer.get("segments", []):
            end = segment["end_seconds"]
            if (
                self.last_kept_end is not None
                and end < self.last_kept_end - BACKWARDS_TOLERANCE_SECONDS
            ):
                self.dropped.append(segment)
                continue
            self.last_kept_end = end
            self.words += segment["words"]
            self.word_instances += [instance] * len(segment["words"])

    def repeated_words(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Pairs of delivered words that are one piece of speech told twice: the same word
        over overlapping times."""
        pairs = []
        for i, a in enumerate(self.words):
            for b in self.words[i + 1 :]:
                same = normalise(a["word"]) == normalise(b["word"])
                if (
                    same
                    and a["start_seconds"] < b["end_seconds"]
                    and b["start_seconds"] < a["end_seconds"]
                ):
                    pairs.append((a, b))
        return pairs

    def heard_until(self) -> float:
        return max((w["end_seconds"] for w in self.words), default=0.0)

    def transcript_errors(self) -> tuple[float, int]:
        """(WER against the reference as far as the words reach, words heard). How far they
        reach depends on passes timing (the last words wait for more audio); what they say
        must not."""
        heard = normalise(" ".join(w["word"] for w in self.words)).split()
        reference = normalise(REFERENCE_TEXT).split()[: max(1, len(heard))]
        return wer(" ".join(reference), " ".join(heard)), len(heard)


async def replay_in_real_time(
    http: aiohttp.ClientSession,
    url: str,
    capture: Capture,
    event: tuple[int, Callable[[], None]] | None = None,
    blobs: list[tuple[int, bytes, float]] | None = None,
) -> None:
    """The extension's requests: one blob when the recorder flushed it, without waiting for
    earlier answers; then the last blob again (as its next blob would) until the words of the
    first two sentences are in. `event` (seq, action): the action runs while that seq's
    request is in flight, EVENT_DELAY_SECONDS after it was sent."""

    async def send(seq: int, blob: bytes) -> None:
        data = body(capture.user_id, capture.tab_id, seq, blob)
        headers = {"Content-Type": "application/json"}
        async with http.post(f"{url}/asr/stream", data=data, headers=headers) as resp:
            capture.record(resp.status, resp.headers.get(INSTANCE_HEADER), await resp.json())

    loop = asyncio.get_running_loop()
    started = loop.time()
    sends = []
    order = first_stream() if blobs is None else blobs
    for seq, blob, at in order:
        await asyncio.sleep(max(0.0, started + at - loop.time()))
        sends.append(asyncio.create_task(send(seq, blob)))
        if event is not None and event[0] == seq:
            await asyncio.sleep(EVENT_DELAY_SECONDS)
            event[1]()
    await asyncio.gather(*sends)
    # The second sentence ends at 8.30 s of audio. A capture that stops sending leaves its
    # last words pending (no new audio, no new pass): stop once words came, then none for a while.
    last_seq, last_blob, _ = order[-1]
    deadline, quiet_until = loop.time() + DRAIN_SECONDS, loop.time() + QUIET_SECONDS
    while loop.time() < min(deadline, quiet_until) and capture.heard_until() < 8.0:
        before = len(capture.words)
        await asyncio.sleep(0.5)
        await send(last_seq, last_blob)
        if len(capture.words) > before or not capture.words:
            quiet_until = loop.time() + QUIET_SECONDS


@pytest.mark.slow
async def test_six_concurrent_sessions_each_stay_on_one_replica_and_transcribe_as_one_process(
    cluster: Cluster,
) -> None:
    captures = [Capture(f"user-affinity-{i}", 100 + i) for i in range(6)]
    # The same capture straight to one replica, at the same time: the single-process answer.
    alone = Capture("user-alone", 99)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(
            *(replay_in_real_time(http, cluster.url, c) for c in captures),
            replay_in_real_time(http, cluster.replicas[0].url, alone),
        )
    owners = []
    for capture in captures:
        assert set(capture.statuses) == {200}, capture.statuses
        assert len(set(capture.instances)) == 1, capture.instances
        owners.append(capture.instances[0])
    assert set(owners) <= {r.name for r in cluster.replicas}
    assert len(set(owners)) >= 2, owners  # the sessions are spread, not all on one replica
    # At least half the first sentence, even on a starved machine; what is heard must be right.
    enough = len(normalise(PAUSES["sentences"][0]["text"]).split()) // 2
    single, single_heard = alone.transcript_errors()
    assert single <= 0.1 and single_heard >= enough, alone.words
    for capture in captures:
        errors, heard = capture.transcript_errors()
        assert errors <= single + 2 / heard and heard >= enough, capture.words
        starts = [w["start_seconds"] for w in capture.words]
        assert starts == sorted(starts)  # times on the session's own clock, never repeated
        assert not capture.dropped, capture.dropped  # none the extension would drop


# --- a session that comes back to a replica that had it before -----------------------------


async def test_a_session_left_behind_is_replaced_when_its_capture_comes_back_far_ahead(
    make_client: ClientFactory,
) -> None:
    """A replica held a session, the capture went on at another replica (a failover, or a
    scale-up and back) and now comes back, many blobs on. Its blobs are beyond the old
    session's hold window: without a fresh session they would be dropped for as long as the
    capture goes on (each one also keeps the old session from expiring)."""
    client = await make_client()
    for seq in range(4):
        resp = await client.post("/asr/stream", json=chunk_body(BLOBS[seq], seq))
        assert resp.status == 200
    await asyncio.sleep(STALE_SESSION_SECONDS)  # meanwhile seqs 4 to 24 went elsewhere
    words: list[dict[str, Any]] = []
    back = 25  # blob 5 (the second sentence) is sent as seq 25, and so on
    for i, seq in enumerate(range(back, back + 4)):
        resp = await client.post("/asr/stream", json=chunk_body(BLOBS[5 + i], seq))
        assert resp.status == 200
        words += [w for s in (await resp.json())["segments"] for w in s["words"]]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(words) < 3:
        resp = await client.post("/asr/stream", json=chunk_body(BLOBS[8], back + 3))
        words += [w for s in (await resp.json())["segments"] for w in s["words"]]
        await asyncio.sleep(0.3)
    assert len(words) >= 3, words
    rest = set(normalise(PAUSES["sentences"][1]["text"]).split())
    assert all(normalise(w["word"]) in rest for w in words[1:]), words
    # On the client's clock, where the capture is now, not where the old session stopped.
    assert words[0]["start_seconds"] >= back, words


# --- bodies larger than HAProxy's buffer -----------------------------------------------------


@pytest.mark.slow
def test_a_body_larger_than_the_buffer_still_reaches_its_sessions_replica(
    cluster: Cluster,
) -> None:
    # Five seconds of Chrome audio in one blob: ~78 KB of JSON, more than one 64 KiB buffer.
    big = body("user-big", 5, 0, b"".join(BLOBS[:5]))
    assert len(big) > BUFFER_BYTES
    status, owner, answer = post(cluster.url, big)
    assert status == 200 and owner is not None, answer
    # The same session's next (small) blob lands where the big one did.
    for seq in (5, 6):
        status, instance, _ = post(cluster.url, body("user-big", 5, seq, BLOBS[seq]))
        assert (status, instance) == (200, owner)


@pytest.mark.slow
def test_a_large_body_with_its_ids_after_the_audio_is_refused_by_the_balancer(
    cluster: Cluster,
) -> None:
    audio_first = {"audio_b64": base64.b64encode(b"".join(BLOBS[:5])).decode()}
    ids = {"user_id": "user-late-ids", "tab_id": 6, "seq": 0}
    status, instance, answer = post(cluster.url, json.dumps({**audio_first, **ids}).encode())
    assert status == 413 and instance is None  # answered by HAProxy: no replica saw it
    assert answer["error"]["code"] == "session_key_unreadable"
    # Within one buffer the order does not matter: both orders go to one replica.
    small_first = {"audio_b64": base64.b64encode(BLOBS[4]).decode(), **ids}
    small_last = {**ids, "audio_b64": base64.b64encode(BLOBS[4]).decode()}
    instances = {post(cluster.url, json.dumps(b).encode())[1] for b in (small_first, small_last)}
    assert len(instances) == 1 and None not in instances


# --- scale-up --------------------------------------------------------------------------------


def owner_of(cluster: Cluster, user_id: str, tab_id: int) -> str:
    """The replica HAProxy picks for a session key. The probe carries the ids and nothing
    else, so its replica answers 400 at once, without decoding or a pass."""
    probe = json.dumps({"user_id": user_id, "tab_id": tab_id}).encode()
    status, instance, _ = post(cluster.url, probe)
    assert status == 400 and instance is not None
    return instance


# Captures replayed across the scale-up: the ring is fixed by the servers' ids and weights, so
# these two keys move from 3 to 4 replicas and this one stays (the test checks it).
LIVE_MOVING = [("user-scale-3", 1003), ("user-live-1", 2001)]
LIVE_STAYING = [("user-scale-0", 1000)]


@pytest.mark.slow
async def test_adding_a_fourth_replica_moves_about_a_quarter_of_sessions_and_they_resume(
    cluster: Cluster,
) -> None:
    keys = [(f"user-scale-{i}", 1000 + i) for i in range(60)]
    live = LIVE_MOVING + LIVE_STAYING
    before = {key: owner_of(cluster, *key) for key in keys + live}
    newcomer = cluster.start_replica()  # started, but not in HAProxy's list until the reload
    try:
        wait_until(lambda: ready(newcomer.url), 90, "the fourth replica ready")
        captures = [Capture(*key) for key in live]
        # Mid-speech, with the moving captures' requests in flight, HAProxy reloads with four.
        reload_mid_speech = (MOVE_SEQ, cluster.reload)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await asyncio.gather(
                *(
                    replay_in_real_time(
                        http,
                        cluster.url,
                        c,
                        reload_mid_speech if c is captures[0] else None,
                        whole_capture(),
                    )
                    for c in captures
                )
            )
        names = {r.name for r in cluster.replicas}
        wait_until(lambda: cluster.servers_up() == names, 30, "HAProxy to see four replicas UP")
        after = {key: owner_of(cluster, *key) for key in keys + live}
        moved = [key for key in keys if after[key] != before[key]]
        # Consistent hashing: a session moves only to the new replica, and only its share
        # (a quarter on average) moves; with a modulo hash three quarters would.
        print(f"scale-up 3 -> 4 replicas: {len(moved)} of {len(keys)} session keys moved")
        assert {after[key] for key in moved} == {newcomer.name}
        assert 0.1 <= len(moved) / len(keys) <= 1 / 3, len(moved)
        for key, capture in zip(live, captures, strict=True):
            words = [w["word"] for w in capture.words]
            print(f"scale-up {key}: {capture.instances} words {words}")
            if key in LIVE_MOVING:
                assert after[key] == newcomer.name
                assert_resumed_elsewhere(capture, before[key])
                assert capture.instances[-1] == newcomer.name
            else:
                assert after[key] == before[key]
                assert set(capture.statuses) == {200}, capture.statuses
                assert set(capture.instances) == {before[key]}, capture.instances
                assert not capture.dropped and not capture.repeated_words(), capture.words
    finally:
        cluster.replicas.remove(newcomer)
        cluster.reload()
        newcomer.proc.send_signal(signal.SIGTERM)
        newcomer.proc.wait(timeout=30)
        wait_until(
            lambda: cluster.servers_up() == {r.name for r in cluster.replicas},
            30,
            "HAProxy back to three replicas",
        )


# --- run-local.sh ----------------------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The command name (2nd field) may hold spaces; the parent pid follows it.
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_run_local_serves_through_haproxy_and_stops_everything_on_sigterm(
    tmp_path: Path,
) -> None:
    # With a token, HAProxy's /readyz checks must carry it, or no replica would ever be UP.
    token = "run-local-token"
    haproxy = haproxy_binary()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISWEEP_")}
    env.update(
        PYTHON=sys.executable,
        PATH=f"{Path(haproxy).parent}:{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        ISWEEP_AUTH_TOKEN=token,
        ISWEEP_INFERENCE_WORKERS="1",
        ISWEEP_CPU_THREADS="1",
        ISWEEP_LOG_FORMAT="json",
        TMPDIR=str(tmp_path),
    )
    with (tmp_path / "run-local.log").open("wb") as log:
        script = subprocess.Popen(
            [str(HAPROXY_DIR / "run-local.sh"), "2", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        seen: set[str | None] = set()

        def answered_by_both() -> bool:
            for i in range(8):
                status, instance, _ = post(url, body(f"user-local-{i}", i, 0, BLOBS[0]), token)
                if status == 200:
                    seen.add(instance)
            return seen == {"replica1", "replica2"}

        wait_until(answered_by_both, 90, "both replicas to answer through HAProxy")
        assert post(url, body("user-local-0", 0, 1, BLOBS[1]))[0] == 401  # the token is needed
        started = children_of(script.pid)
        assert len(started) == 3  # two replicas and HAProxy's master
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=40) == 0
    finally:
        if script.poll() is None:  # a failed check: let the script stop what it started
            script.send_signal(signal.SIGTERM)
            try:
                script.wait(timeout=40)
            except subprocess.TimeoutExpired:
                script.kill()
    log_text = (tmp_path / "run-local.log").read_text()
    assert not [pid for pid in started if alive(pid)], log_text
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/readyz", timeout=2)
    assert re.search(r"run-local: 2 replicas .* behind http://127\.0\.0\.1:\d+", log_text)
    assert not list(tmp_path.glob("isweep-haproxy.*")), "its temporary folder is removed"


# --- failover and drain: a session moves mid-speech and goes on ------------------------------

# A session moves (its replica killed or stopped, or a replica added) while blob 5 is in
# flight: 5.1 s to 6.1 s of the capture, in the second sentence (5.10 s to 8.30 s).
MOVE_SEQ = 5
# The bound: words resume within this much audio after the replica went.
RESUME_SECONDS = 3.0


async def move_mid_speech(cluster: Cluster, key: tuple[str, int], sig: signal.Signals) -> Capture:
    """Replay a capture through HAProxy and send `sig` to its replica mid-speech; the
    capture as the client saw it. Leaves the stopped replica stopped."""
    owner_name = owner_of(cluster, *key)
    owner = next(r for r in cluster.replicas if r.name == owner_name)
    capture = Capture(*key)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await replay_in_real_time(
            http,
            cluster.url,
            capture,
            (MOVE_SEQ, lambda: owner.proc.send_signal(sig)),
            whole_capture(),
        )
    return capture


def assert_resumed_elsewhere(capture: Capture, owner: str) -> None:
    """What the extension needs of a moved session: only 200s; words before the move from
    the owner, after it from one other replica, resuming within RESUME_SECONDS of audio;
    nothing it would drop as going backwards; no piece of speech told twice."""
    assert set(capture.statuses) == {200}, capture.statuses
    assert capture.instances[0] == owner, capture.instances
    # Once moved, the session stays moved: its later requests all reach one other replica.
    # (The retry of the request in flight may have gone to another one: HAProxy 2.6 retries
    # on the ring's next replica while the dead one is still on the ring, then looks up the
    # nearest once it is out; see README "Scaling out".)
    moved = capture.instances.index(next(i for i in capture.instances if i != owner))
    assert owner not in capture.instances[moved:], capture.instances
    assert len(set(capture.instances[moved + 1 :])) == 1, capture.instances
    assert not capture.dropped, (capture.dropped, capture.words)
    assert not capture.repeated_words(), capture.repeated_words()
    moved_at = SENT_AT[MOVE_SEQ] + EVENT_DELAY_SECONDS  # capture seconds when it went
    resumed = [w for w, i in zip(capture.words, capture.word_instances, strict=True) if i != owner]
    assert resumed, capture.words
    assert resumed[0]["start_seconds"] <= moved_at + RESUME_SECONDS, resumed
    # What comes after the move is the rest of the second sentence and the start of the
    # third (a word cut by the move may come out as a fragment).
    rest = set(normalise(" ".join(s["text"] for s in PAUSES["sentences"][1:])).split())
    wrong = [w["word"] for w in resumed if normalise(w["word"]) not in rest]
    assert len(wrong) <= 1 and len(resumed) >= 3, (wrong, resumed)


def restore(cluster: Cluster, name: str) -> None:
    replica = next(r for r in cluster.replicas if r.name == name)
    if replica.proc.poll() is None:
        replica.proc.kill()
    replica.proc.wait(timeout=10)
    replica.proc = cluster.spawn(replica.port, replica.name)
    cluster.wait_all_up()


@pytest.mark.slow
async def test_a_session_whose_replica_is_killed_mid_speech_goes_on_at_the_next(
    cluster: Cluster,
) -> None:
    key = ("user-failover", 77)
    owner = owner_of(cluster, *key)
    try:
        # The request in flight meets a reset connection, the next ones a refused one
        # (before a health check has noticed): HAProxy sends each to the next replica on the
        # ring, which joins the capture at the blob it gets.
        capture = await move_mid_speech(cluster, key, signal.SIGKILL)
        print(f"failover: {capture.instances} words {[w['word'] for w in capture.words]}")
        assert_resumed_elsewhere(capture, owner)
        assert owner not in cluster.servers_up()
    finally:
        restore(cluster, owner)


@pytest.mark.slow
async def test_a_replica_stopped_mid_speech_answers_in_flight_and_its_session_moves(
    cluster: Cluster,
) -> None:
    key = ("user-drain", 78)
    owner = owner_of(cluster, *key)
    replica = next(r for r in cluster.replicas if r.name == owner)
    retried_before = cluster.retries()
    try:
        capture = await move_mid_speech(cluster, key, signal.SIGTERM)
        print(f"drain: {capture.instances} words {[w['word'] for w in capture.words]}")
        # Requests that met the closed socket were retried (a count, not a bound: a health
        # check may see the replica go first, then HAProxy sends none there).
        retried = [a - b for a, b in zip(cluster.retries(), retried_before, strict=True)]
        print(f"drain: HAProxy retries {retried[0]}, redispatches {retried[1]}")
        # The blob in flight at SIGTERM is answered 200, by the stopping replica if it had
        # read it (as it had every earlier one), else by the next (a refused connection).
        assert capture.instances[:MOVE_SEQ] == [owner] * MOVE_SEQ, capture.instances
        assert_resumed_elsewhere(capture, owner)
        assert replica.proc.wait(timeout=15) == 0
    finally:
        restore(cluster, owner)
