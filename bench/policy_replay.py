"""Replay the corpus through the real model and the commit policy on a modelled clock, for
quick, repeatable comparisons of policy changes; `realtime.py` stays the figure we steer by.

Each sent blob is decoded as the server decodes it (a recorder restart's lost audio filled
with silence as the session fills it) and triggers one pass over the buffer when at least
`min_pass_audio_seconds` is new; a pass starts when its blob has arrived and the previous pass
ended, and lasts `--pass-seconds` plus `--pass-per-audio-second` per second of buffer (one
1-thread worker, which is what one session gets), or with `--measured` what it took here.
Its words go out with the first answer after it ends: its own request's if it ends within
`response_wait_seconds` of the blob's arrival, else a later one's. Which windows the passes
see therefore never depends on the machine's load, so two runs of the same policy give the
same figures; only the scoring's lags are modelled (and, with `--measured`, measured). The
lag, WER and lost/invented figures are scored exactly as realtime.py scores them.

    python -m bench.policy_replay [--recordings NAME ...] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from isweep_backend.audio.decode import SessionDecoder
from isweep_backend.engine import Engine
from isweep_backend.policy import LocalAgreementPolicy
from isweep_backend.recognition import run_pass
from isweep_backend.ringbuffer import PcmRingBuffer
from isweep_backend.schema import segments_from_words
from isweep_backend.session import restart_fill_samples
from isweep_backend.settings import Settings, load_settings
from isweep_backend.timeline import SAMPLE_RATE, PassRequest

from . import corpus, realtime

# What a pass costs on the server beyond the model: the executor hop, the policy, the answer.
MEASURED_OVERHEAD_SECONDS = 0.03


@dataclass
class Replayed:
    responses: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)


def replay(
    engine: Engine, settings: Settings, rec: corpus.Recording, args: argparse.Namespace
) -> Replayed:
    ring = PcmRingBuffer(round(settings.buffer_seconds * SAMPLE_RATE))
    policy = LocalAgreementPolicy.from_settings(settings)
    decoder = SessionDecoder()
    min_new = round(settings.min_pass_audio_seconds * SAMPLE_RATE)
    processed = 0
    pass_free_at = 0.0
    last_arrival: float | None = None
    # (answer time, words) per request, and words committed after their own request answered.
    answers: list[tuple[float, list[Any]]] = []
    pending: list[tuple[float, list[Any]]] = []
    for blob in rec.sent:
        result = decoder.decode(blob.data)
        if result.restart is not None:
            gap = None if last_arrival is None else blob.at_seconds - last_arrival
            fill = restart_fill_samples(
                result.restart, gap, result.pcm.size - result.restart.at_sample
            )
            if fill > 0:
                at = result.restart.at_sample
                result.pcm = np.concatenate(
                    [result.pcm[:at], np.zeros(fill, np.float32), result.pcm[at:]]
                )
        last_arrival = blob.at_seconds
        ring.append(result.pcm)
        answer_by = blob.at_seconds + settings.response_wait_seconds
        if ring.end - processed >= min_new:
            request = PassRequest(ring.window(), ring.start, policy.prompt(ring.start), "en")
            started = max(blob.at_seconds, pass_free_at)
            heard = run_pass(engine, request)
            if args.measured:
                ended = started + heard.inference_seconds + MEASURED_OVERHEAD_SECONDS
            else:
                ended = (
                    started
                    + args.pass_seconds
                    + args.pass_per_audio_second * (request.audio.size / SAMPLE_RATE)
                )
            pass_free_at = ended
            decision = policy.apply(heard, ring.start)
            processed = request.offset + request.audio.size
            if decision.trim_to is not None:
                ring.trim_to(decision.trim_to)
            pending.append((ended, decision.words))
        # This request answers when the pass over its audio ends, or at its deadline.
        answered = min(max(pass_free_at, blob.at_seconds), answer_by)
        ready = [w for t, ws in pending if t <= answered for w in ws]
        pending = [(t, ws) for t, ws in pending if t > answered]
        answers.append((answered, ready))
    out = Replayed()
    for answered_at, words in sorted(answers, key=lambda a: a[0]):
        out.responses.append((answered_at, segments_from_words(words)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.policy_replay", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--recordings", nargs="*")
    parser.add_argument("--holdout", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pass-seconds", type=float, default=0.04)
    parser.add_argument("--pass-per-audio-second", type=float, default=0.023)
    parser.add_argument(
        "--measured",
        action="store_true",
        help="each pass lasts what it took here (tail effects of slow passes; not repeatable)",
    )
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--dump", type=Path, help="write the answers here, as realtime.py does")
    args = parser.parse_args()
    env = realtime.parse_settings(args.set)
    settings = replace(load_settings([], env), cpu_threads=1, inference_workers=1)
    engine = Engine.load(settings)
    points = []
    for rec in corpus.select(args.recordings, args.holdout):
        run = replay(engine, settings, rec, args)
        session_run = realtime.SessionRun(responses=run.responses)
        scores, wers = realtime.score_runs(rec, 1, [session_run], args.dump)
        offline = float(rec.offline["sent_wer"])
        points.append(realtime.Point(rec.name, 1, scores, wers, offline, None, 0.0, [], [], 0.0))
        print(realtime.row(rec.name, 1, realtime.summary(points[-1:])), flush=True)
        if args.verbose:
            for line in realtime.details(points[-1]):
                print("   ", line)
            print("    streamed:", scores[0].streamed_text)
    print(realtime.row("ALL", 1, realtime.summary(points)))


if __name__ == "__main__":
    main()
