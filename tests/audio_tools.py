"""Test helpers that make real encoder output: WebM/Ogg Opus streams as a browser sends them."""

from __future__ import annotations

import io
import itertools
import random
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

FIXTURES = Path(__file__).parent / "fixtures"
Pcm = npt.NDArray[np.float32]


def read_wav(path: Path) -> tuple[Pcm, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2, "fixtures are 16-bit PCM"
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        channels = w.getnchannels()
        rate = w.getframerate()
    pcm = raw.astype(np.float32).reshape(-1, channels).mean(axis=1) / 32768.0
    return pcm.astype(np.float32), rate


def wav_bytes(pcm: Pcm, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(pcm, -1, 1) * 32767).astype(np.int16).tobytes())
    return buf.getvalue()


def encode_file(pcm: Pcm, rate: int, container: str, codec: str) -> bytes:
    """A whole, self-contained file (e.g. "mp3"/"libmp3lame", "mp4"/"aac") from mono PCM."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            pcm.reshape(1, -1).astype(np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = rate
        frame.pts = 0
        frame.time_base = Fraction(1, rate)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def _resample(pcm: Pcm, rate: int, target: int) -> Pcm:
    if rate == target:
        return pcm
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    frame = av.AudioFrame.from_ndarray(
        pcm.reshape(1, -1).astype(np.float32), format="flt", layout="mono"
    )
    frame.sample_rate = rate
    frame.time_base = Fraction(1, rate)
    frame.pts = 0
    frames = resampler.resample(frame) + resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)


def encode_opus_stream(
    pcm: Pcm,
    rate: int,
    container: str = "webm",
    cluster_ms: int | None = None,
    frame_ms: int = 60,
) -> bytes:
    """Encode like Chrome's MediaRecorder: live (unknown-size) stream, 48 kHz stereo Opus,
    60 ms frames, 128 kbit/s. `container` is "webm" or "ogg"."""
    stereo_rate = 48000
    mono48 = _resample(pcm, rate, stereo_rate)
    stereo = np.stack([mono48, mono48])
    buf = io.BytesIO()
    options = {"live": "1"} if container == "webm" else {}
    if container == "webm" and cluster_ms is not None:
        options["cluster_time_limit"] = str(cluster_ms)
    out = av.open(buf, "w", format=container, options=options)
    stream = out.add_stream("libopus", rate=stereo_rate, layout="stereo")
    stream.bit_rate = 128000
    stream.codec_context.options = {"frame_duration": str(frame_ms)}
    step = stereo_rate * frame_ms // 1000
    for i in range(0, stereo.shape[1], step):
        # Packed "flt" wants interleaved samples: L0 R0 L1 R1 ...
        interleaved = np.ascontiguousarray(stereo[:, i : i + step].T).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="flt", layout="stereo")
        frame.sample_rate = stereo_rate
        frame.pts = i
        frame.time_base = Fraction(1, stereo_rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return buf.getvalue()


def cut_blobs(stream: bytes, seconds: float = 1.0, seed: int = 0) -> list[bytes]:
    """Cut a stream the way MediaRecorder's timeslice does: about every `seconds` of audio,
    at an arbitrary byte inside the packet that crosses the boundary (never at a Cluster or
    page start). Packet positions come from FFmpeg's demuxer, not from ours."""
    rng = random.Random(seed)
    cuts: list[int] = []
    next_cut = seconds
    with av.open(io.BytesIO(stream)) as container:
        audio = container.streams.audio[0]
        for packet in container.demux(audio):
            if packet.pts is None or packet.pos is None or packet.pos < 0:
                continue
            if float(packet.pts * audio.time_base) >= next_cut:
                cuts.append(packet.pos + rng.randint(1, max(1, packet.size - 1)))
                next_cut += seconds
    edges = [0, *sorted(c for c in set(cuts) if 0 < c < len(stream)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges) if b > a]
