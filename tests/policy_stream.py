"""Real speech through the real engine and the commit policy, pass by pass, as a session runs
them: audio arrives a blob at a time, each pass sees the buffer from its trimmed start to the
newest sample with the policy's prompt, and the policy's trims apply before the next pass.
No HTTP and no scheduler, so which windows the passes see is exactly reproducible."""

from __future__ import annotations

from dataclasses import dataclass, field

from isweep_backend.engine import Engine
from isweep_backend.policy import LocalAgreementPolicy
from isweep_backend.recognition import run_pass
from isweep_backend.ringbuffer import PcmRingBuffer
from isweep_backend.settings import Settings
from isweep_backend.timeline import SAMPLE_RATE, PassRequest, PassResult, Word
from tests.audio_tools import Pcm


@dataclass
class Streamed:
    words: list[Word] = field(default_factory=list)
    passes: list[tuple[PassRequest, PassResult, list[Word]]] = field(default_factory=list)

    def texts(self) -> list[str]:
        return [w.key for w in self.words]


def stream_through_policy(
    engine: Engine, settings: Settings, pcm: Pcm, step_seconds: float = 1.0, phase: float = 0.0
) -> Streamed:
    """Feed `pcm` in `step_seconds` pieces (the first one `phase` s long when set, so blob
    edges fall elsewhere) with one pass after each piece; returns what was committed."""
    ring = PcmRingBuffer(round(settings.buffer_seconds * SAMPLE_RATE))
    policy = LocalAgreementPolicy.from_settings(settings)
    step = round(step_seconds * SAMPLE_RATE)
    first = round(phase * SAMPLE_RATE) or step
    edges = [*range(first, pcm.size, step), pcm.size]
    streamed = Streamed()
    fed = 0
    for edge in edges:
        ring.append(pcm[fed:edge])
        fed = edge
        request = PassRequest(ring.window(), ring.start, policy.prompt(ring.start), "en")
        result = run_pass(engine, request)
        decision = policy.apply(result, ring.start)
        streamed.words += decision.words
        streamed.passes.append((request, result, decision.words))
        if decision.trim_to is not None:
            ring.trim_to(decision.trim_to)
    return streamed
