"""Shared fixtures: the real model (loaded once), real speech, and the real HTTP app."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from isweep_backend.app import create_app
from isweep_backend.engine import Engine
from isweep_backend.logging import configure_logging
from isweep_backend.settings import Settings
from tests.audio_tools import FIXTURES, Pcm, read_wav

configure_logging("warning", "json")


@dataclass(frozen=True)
class Speech:
    """A recording with its reference text; `pauses` are (start, end) seconds of silence."""

    name: str
    pcm: Pcm
    rate: int
    text: str
    pauses: list[tuple[float, float]]

    @property
    def seconds(self) -> float:
        return self.pcm.size / self.rate


def load_synthetic(name: str) -> Speech:
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    pcm, rate = read_wav(FIXTURES / f"{name}.wav")
    pauses = [(p["start_s"], p["end_s"]) for p in meta.get("pauses", [])]
    return Speech(name, pcm, rate, meta["text"], pauses)


def load_real_speech() -> Speech:
    """The three human recordings of tests/fixtures/speech, joined by 1 s of silence."""
    parts: list[Pcm] = []
    texts: list[str] = []
    rate = 16000
    for name in ("sense_and_sensibility_0870", "goforward", "sense_and_sensibility_0890"):
        pcm, rate = read_wav(FIXTURES / "speech" / f"{name}.wav")
        parts += [pcm, np.zeros(rate, dtype=np.float32)]
        texts.append((FIXTURES / "speech" / f"{name}.txt").read_text().strip())
    return Speech("real", np.concatenate(parts), rate, " ".join(texts), [])


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Engine:
    return Engine.load(settings)


# A client of the app that create_app builds, so `client.app[...]` has the AppKeys' types.
Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[Client]],
    engine: Engine,
    settings: Settings,
) -> AsyncIterator[ClientFactory]:
    async def make(**overrides: Any) -> Client:
        return await aiohttp_client(create_app(replace(settings, **overrides), engine))

    yield make


def chunk_body(
    blob: bytes, seq: int, user_id: str = "user-1", tab_id: int = 7, **extra: Any
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "tab_id": tab_id,
        "seq": seq,
        "chunk_start_seconds": float(seq),
        "mime_type": "audio/webm;codecs=opus",
        "audio_b64": base64.b64encode(blob).decode(),
        **extra,
    }


FIXTURES_DIR: Path = FIXTURES
