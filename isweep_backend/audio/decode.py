"""Per-session streaming decoder: blobs of a WebM/Ogg Opus stream, or whole files, to 16 kHz
mono float32 PCM, gapless across blobs (PyAV does the codec and resampling work).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np

from ..errors import UndecodableAudio, clip
from ..timeline import SAMPLE_RATE, Pcm
from .budget import (
    MAX_BLOB_AUDIO_SECONDS,
    MAX_OVER_BUDGET_BLOBS_PER_SESSION,
    check_opus_audio_budget,
)
from .events import OPUS, Demuxer, Packet, Resynced, StreamStarted
from .ogg import OGG_MAGIC, OggOpusDemuxer, starts_ogg_stream
from .webm import EBML_MAGIC, WebmDemuxer, chrome_opus_track

OPUS_RATE = 48_000
# A gap longer than this is not filled with silence: it is more likely a clock jump.
MAX_GAP_FILL_SECONDS = 30.0
EMPTY: Pcm = np.zeros(0, dtype=np.float32)
# The reference decoder keeps ~0.03 MB of state a session; FFmpeg's own ~0.2 MB.
OPUS_DECODER = "libopus" if "libopus" in av.codecs_available else "opus"

_WHOLE_FILE_MAGICS = (b"RIFF", b"ID3", b"fLaC", b"FORM")
# The whole-file path (a blob that is a file on its own) opens only these containers, each
# with FFmpeg's demuxer named here (never by probing all of them), and decodes only these
# codecs: README "Accepted audio" lists the same.
WHOLE_FILE_CONTAINERS = ("WAV", "AIFF", "MP3", "M4A/MP4", "FLAC")
WHOLE_FILE_CODECS = frozenset(
    {"mp3", "mp3float", "aac", "flac"}
    | {f"pcm_{kind}" for kind in ("u8", "s16le", "s16be", "s24le", "s24be", "s32le", "s32be")}
    | {"pcm_f32le", "pcm_f32be", "pcm_f64le", "pcm_f64be", "pcm_alaw", "pcm_mulaw"}
)
# Outside these, a file is not speech from a real recorder: refused before decoding.
WHOLE_FILE_SAMPLE_RATES = (8_000, 192_000)
WHOLE_FILE_MAX_CHANNELS = 8


def starts_stream(blob: bytes) -> bool:
    """True if the blob opens a new WebM or Ogg stream (it carries the container header)."""
    return blob.startswith(EBML_MAGIC) or starts_ogg_stream(blob)


def looks_like_whole_file(blob: bytes) -> bool:
    return (
        blob.startswith(_WHOLE_FILE_MAGICS)
        or blob[4:8] == b"ftyp"
        or (len(blob) > 1 and blob[0] == 0xFF and blob[1] & 0xE0 == 0xE0)
    )


def whole_file_demuxer(blob: bytes) -> str | None:
    """FFmpeg's demuxer for a whole file in an accepted container, from its magic; None for
    any other file (AVI in RIFF, AIFF-C, ADTS AAC, ...)."""
    if blob.startswith(b"RIFF") and blob[8:12] == b"WAVE":
        return "wav"
    if blob.startswith(b"FORM") and blob[8:12] == b"AIFF":
        return "aiff"
    if blob.startswith(b"fLaC"):
        return "flac"
    if blob[4:8] == b"ftyp":
        return "mp4"
    # MPEG audio: an ID3 tag or a frame sync whose layer bits are not 00 (00 is ADTS AAC).
    if blob.startswith(b"ID3") or (
        len(blob) > 1 and blob[0] == 0xFF and blob[1] & 0xE0 == 0xE0 and blob[1] & 0x06
    ):
        return "mp3"
    return None


@dataclass
class DecodeResult:
    """What one blob yielded: PCM to append, and what happened on the way."""

    pcm: Pcm = field(default_factory=lambda: EMPTY)
    restarted: bool = False  # a new container stream began inside a running session
    resynced_bytes: int = 0  # bytes thrown away to find the next parsable point
    gap_fill_samples: int = 0  # silence inserted for audio lost to a skipped seq
    restart: RestartFacts | None = None  # set when `restarted`


@dataclass(frozen=True)
class RestartFacts:
    """What the decoder knows at a recorder restart; the session turns it into silence.

    The old stream's last blob (the one `stop()` flushed) never comes from the real client, so
    the decoder cannot see how much audio was lost: the session estimates it from arrivals.
    """

    at_sample: int  # index in the result's PCM where the new stream's audio begins
    carried_gap_samples: int  # estimated audio of seqs skipped just before the restart
    old_blob_samples: int  # audio per blob of the old stream, 0 if it had none


def frame_to_mono(frame: Any) -> Pcm:
    """Average the channels of any PyAV audio frame into mono float32 in [-1, 1].

    Averaging (not a resampler's downmix) keeps a full-scale stereo signal at full scale.
    """
    array = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T
    kind = array.dtype
    if kind == np.int16:
        array = array.astype(np.float32) / 32768.0
    elif kind == np.int32:
        array = array.astype(np.float32) / 2147483648.0
    elif kind == np.uint8:
        array = (array.astype(np.float32) - 128.0) / 128.0
    mono = array.astype(np.float32).mean(axis=0) if channels > 1 else array[0]
    return np.ascontiguousarray(mono, dtype=np.float32)


class MonoResampler:
    """One persistent libswresample state: mono float32 at `rate` to 16 kHz, no seams.

    Built as a one-thread filter graph (abuffer -> aformat -> abuffersink, where FFmpeg puts
    its resampler) rather than av.AudioResampler, whose graph starts a thread per core for
    every session.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._pts = 0
        self._graph: Any = None
        if rate != SAMPLE_RATE:
            graph = av.filter.Graph()
            graph.threads = 1
            source = graph.add_abuffer(
                format="flt", sample_rate=rate, layout="mono", time_base=Fraction(1, rate)
            )
            convert = graph.add(
                "aformat", sample_fmts="flt", sample_rates=str(SAMPLE_RATE), channel_layouts="mono"
            )
            sink = graph.add("abuffersink")
            source.link_to(convert)
            convert.link_to(sink)
            graph.configure()
            self._graph = graph

    def resample(self, mono: Pcm) -> Pcm:
        if mono.size == 0:
            return EMPTY
        if self._graph is None:
            return mono
        frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.rate
        frame.time_base = Fraction(1, self.rate)
        frame.pts = self._pts
        self._pts += mono.size
        self._graph.push(frame)
        return self._pull()

    def flush(self) -> Pcm:
        if self._graph is None:
            return EMPTY
        self._graph.push(None)
        return self._pull()

    def _pull(self) -> Pcm:
        frames = []
        while True:
            try:
                frames.append(self._graph.pull())
            except (av.error.BlockingIOError, av.error.EOFError):
                break
        return _frames_to_pcm(frames)


def _frames_to_pcm(frames: list[Any]) -> Pcm:
    parts = [f.to_ndarray().reshape(-1) for f in frames]
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else EMPTY


class OpusFrameDecoder:
    """Opus packets of one stream to mono 16 kHz PCM.

    FFmpeg's decoder drops the OpusHead pre-skip itself (it reads it from the extradata), so
    the first sample out is the first sample the recorder captured.
    """

    def __init__(self, extradata: bytes, channels: int) -> None:
        self._codec: av.AudioCodecContext = av.CodecContext.create(OPUS_DECODER, "r")  # type: ignore[assignment]
        if extradata:
            self._codec.extradata = extradata
        self._codec.sample_rate = OPUS_RATE
        self._codec.layout = "stereo" if channels >= 2 else "mono"
        self._resampler = MonoResampler(OPUS_RATE)
        self.decoded_48k_samples = 0

    def decode(self, packet: bytes) -> Pcm:
        try:
            frames = self._codec.decode(av.Packet(packet))
        except av.FFmpegError:
            # One damaged packet is packet loss to Opus; the stream goes on.
            return EMPTY
        parts = []
        for frame in frames:
            mono = frame_to_mono(frame)
            self.decoded_48k_samples += mono.size
            parts.append(self._resampler.resample(mono))
        return np.concatenate(parts) if parts else EMPTY

    def flush(self) -> Pcm:
        return self._resampler.flush()


class SessionDecoder:
    """Everything a session needs to turn its blobs, in seq order, into PCM."""

    def __init__(self) -> None:
        self._demuxer: Demuxer | None = None
        self._opus: OpusFrameDecoder | None = None
        self._expected_next_ns: int | None = None
        self._after_gap = False
        self._gap_estimate_samples = 0
        self._stream_blobs = 0
        self._stream_samples = 0
        self._magic_prefix = b""  # a first blob too short to tell its container yet
        self._over_budget_blobs = 0
        self.streams_started = 0
        self._may_join_mid_stream = False
        self._joined_48k_samples: int | None = None  # decoded since joining, until a timestamp
        self.joined_stream_seconds: float | None = None  # stream time where joining began

    def allow_joining_mid_stream(self) -> None:
        """Continuation bytes with no header seen may start this decoder: the header went to
        an earlier process, or to a session since evicted. They are taken as Chrome's one
        Opus track (WebM only: the Ogg path needs its header)."""
        self._may_join_mid_stream = True

    @property
    def has_stream(self) -> bool:
        return self._demuxer is not None

    def note_gap(self, missing_blobs: int) -> None:
        """`missing_blobs` blobs will never come: resync, and fill the time they held.

        The lost time is read from the stream's own timestamps where they survive the gap, and
        otherwise estimated from the audio per blob seen so far in this stream.
        """
        if self._demuxer is not None:
            self._demuxer.mark_discontinuity()
        if not self.has_stream:
            # The first blobs, header included, are gone for good: join at the next one.
            self._may_join_mid_stream = True
        self._after_gap = self.has_stream
        per_blob = self._stream_samples / self._stream_blobs if self._stream_blobs else 0.0
        self._gap_estimate_samples += round(missing_blobs * per_blob)

    def decode(self, blob: bytes) -> DecodeResult:
        """Decode the session's next blob, in seq order (blocking: call it from an executor).

        Args:
            blob: the next bytes of the session's WebM or Ogg stream (a new stream's header
                starts a new one: a recorder restart), or a whole file in an accepted format.

        Returns:
            The 16 kHz mono PCM the blob completes, gapless after the previous blob's, with
            what happened on the way (a restart, resynced bytes, silence for lost audio).

        Raises:
            UndecodableAudio: the blob yields no audio; its `kind` says why. The decoder
                stays usable for the session's next blobs.
        """
        if self._over_budget_blobs >= MAX_OVER_BUDGET_BLOBS_PER_SESSION:
            raise UndecodableAudio(
                "over_budget",
                f"this session sent {self._over_budget_blobs} blobs over budget; "
                "its later blobs are not decoded",
            )
        try:
            result = self._decode(blob)
        except UndecodableAudio as exc:
            if exc.kind == "over_budget":
                self._over_budget_blobs += 1
            raise
        if not result.restarted and self.has_stream:
            self._stream_blobs += 1
            self._stream_samples += result.pcm.size - result.gap_fill_samples
        return result

    def _decode(self, blob: bytes) -> DecodeResult:
        if not self.has_stream:
            blob, self._magic_prefix = self._magic_prefix + blob, b""
            if len(blob) < len(EBML_MAGIC) and (
                EBML_MAGIC.startswith(blob) or OGG_MAGIC.startswith(blob)
            ):
                self._magic_prefix = blob
                return DecodeResult()
        if blob.startswith(EBML_MAGIC):
            return self._decode_stream_start(blob, WebmDemuxer())
        if starts_ogg_stream(blob):
            return self._decode_stream_start(blob, OggOpusDemuxer())
        if self._demuxer is not None:
            return self._feed(blob)
        if looks_like_whole_file(blob):
            return DecodeResult(pcm=decode_whole_file(blob))
        if self._may_join_mid_stream:
            self._demuxer = WebmDemuxer.joining_mid_stream(chrome_opus_track())
            self._joined_48k_samples = 0
            return self._feed(blob)
        raise UndecodableAudio(
            "no_stream_header",
            "continuation bytes arrived but this session has no stream header yet "
            "(the first blob of a recording carries it)",
        )

    def _decode_stream_start(self, blob: bytes, demuxer: Demuxer) -> DecodeResult:
        # A gap noted just before the restart was never filled: the old stream's next frame,
        # which would have filled it, never comes. Carry it to the session.
        carried = self._gap_estimate_samples if self._after_gap else 0
        if carried > MAX_GAP_FILL_SECONDS * SAMPLE_RATE:
            carried = 0  # as in _gap_fill: more likely a clock jump than lost audio
        old_blob = round(self._stream_samples / self._stream_blobs) if self._stream_blobs else 0
        tail = self._close_stream()
        restarted = self.streams_started > 0
        self._after_gap = False
        self._demuxer = demuxer
        result = self._feed(blob)
        result.pcm = np.concatenate([tail, result.pcm]) if tail.size else result.pcm
        result.restarted = restarted
        if restarted:
            result.restart = RestartFacts(tail.size, carried, old_blob)
        return result

    def _close_stream(self) -> Pcm:
        tail = self._opus.flush() if self._opus is not None else EMPTY
        self._demuxer = None
        self._opus = None
        self._expected_next_ns = None
        self._joined_48k_samples = None
        self._stream_blobs = 0
        self._stream_samples = 0
        self._gap_estimate_samples = 0
        return tail

    def _feed(self, blob: bytes) -> DecodeResult:
        assert self._demuxer is not None
        result = DecodeResult()
        parts: list[Pcm] = []
        events = self._demuxer.feed(blob)
        check_opus_audio_budget([e.data for e in events if isinstance(e, Packet)])
        for event in events:
            if isinstance(event, StreamStarted):
                self._start_opus(event)
            elif isinstance(event, Resynced):
                result.resynced_bytes += event.dropped_bytes
            else:
                if self._opus is None and self._joined_48k_samples is not None:
                    self._start_opus_from_packet(event.data)
                if self._opus is not None:
                    parts.extend(self._decode_timed_frame(event.data, event.timestamp_ns, result))
        result.pcm = np.concatenate(parts) if parts else EMPTY
        return result

    def _start_opus(self, started: StreamStarted) -> None:
        if started.codec != OPUS:
            raise UndecodableAudio(
                "unsupported_codec", f"the stream's codec {clip(started.codec)} is not Opus"
            )
        self.streams_started += 1
        self._opus = OpusFrameDecoder(started.codec_private, started.channels or 2)

    def _start_opus_from_packet(self, packet: bytes) -> None:
        # RFC 6716 section 3.1: bit 2 of the TOC byte is the 's' bit, 1 for stereo.
        stereo = bool(packet) and bool(packet[0] & 0x04)
        self.streams_started += 1
        self._opus = OpusFrameDecoder(b"", 2 if stereo else 1)

    def _gap_fill(self, timestamp_ns: int | None, result: DecodeResult) -> list[Pcm]:
        """Silence standing in for the audio lost before this frame, if a gap was noted."""
        if not self._after_gap:
            return []
        self._after_gap = False
        fill = self._gap_estimate_samples
        self._gap_estimate_samples = 0
        if timestamp_ns is not None and self._expected_next_ns is not None:
            fill = round((timestamp_ns - self._expected_next_ns) * SAMPLE_RATE / 1e9)
        if not 0 < fill <= MAX_GAP_FILL_SECONDS * SAMPLE_RATE:
            return []
        result.gap_fill_samples += fill
        return [np.zeros(fill, dtype=np.float32)]

    def _decode_timed_frame(
        self, data: bytes, timestamp_ns: int | None, result: DecodeResult
    ) -> list[Pcm]:
        assert self._opus is not None
        parts = self._gap_fill(timestamp_ns, result)
        before = self._opus.decoded_48k_samples
        parts.append(self._opus.decode(data))
        produced = self._opus.decoded_48k_samples - before
        if self._joined_48k_samples is not None:
            self._note_joined_stream_time(timestamp_ns, before)
        if timestamp_ns is not None:
            self._expected_next_ns = timestamp_ns + round(produced * 1e9 / OPUS_RATE)
        elif self._expected_next_ns is not None:
            self._expected_next_ns += round(produced * 1e9 / OPUS_RATE)
        return parts

    def _note_joined_stream_time(self, timestamp_ns: int | None, decoded_before: int) -> None:
        """The stream time of the first sample decoded after joining, once a frame's time is
        known (the first Cluster after the join): where in its stream this session began."""
        if timestamp_ns is None:
            return
        self._joined_48k_samples = None
        self.joined_stream_seconds = max(0.0, timestamp_ns / 1e9 - decoded_before / OPUS_RATE)


def decode_whole_file(blob: bytes) -> Pcm:
    """A self-contained file in an accepted container and codec (WHOLE_FILE_CONTAINERS,
    WHOLE_FILE_CODECS) to 16 kHz mono PCM.

    Raises UndecodableAudio for any other file, for a sample rate or channel count no
    recorder writes, and for more than MAX_BLOB_AUDIO_SECONDS of audio: refused from the
    header where it says so, else as soon as decoding passes the budget, so a small file
    that expands to hours of audio never does.
    """
    demuxer = whole_file_demuxer(blob)
    if demuxer is None:
        raise UndecodableAudio(
            "unsupported_container",
            "a whole-file blob must be " + ", ".join(WHOLE_FILE_CONTAINERS),
        )
    try:
        with av.open(io.BytesIO(blob), mode="r", format=demuxer) as container:
            if not container.streams.audio:
                raise UndecodableAudio("no_audio_stream", "the file has no audio stream")
            stream = container.streams.audio[0]
            rate = _check_whole_file_stream(container, stream)
            return _decode_within_budget(container, stream, rate)
    except av.FFmpegError as exc:
        raise UndecodableAudio("corrupt_file", f"could not decode the file: {exc}") from exc


def _check_whole_file_stream(container: Any, stream: Any) -> int:
    """The stream's sample rate, once its codec, rate, channels and declared length pass."""
    codec = stream.codec_context.name
    if codec not in WHOLE_FILE_CODECS:
        raise UndecodableAudio(
            "unsupported_codec", f"codec {clip(codec)} is not accepted in a whole file"
        )
    rate = int(stream.codec_context.sample_rate or 0)
    low, high = WHOLE_FILE_SAMPLE_RATES
    if not low <= rate <= high:
        raise UndecodableAudio(
            "implausible_format", f"sample rate {rate} Hz is outside {low}-{high} Hz"
        )
    channels = int(stream.codec_context.channels or 0)
    if not 1 <= channels <= WHOLE_FILE_MAX_CHANNELS:
        raise UndecodableAudio("implausible_format", f"{channels} channels")
    declared = _declared_seconds(container, stream)
    if declared > MAX_BLOB_AUDIO_SECONDS:
        raise _over_budget(declared)
    return rate


def _declared_seconds(container: Any, stream: Any) -> float:
    """The length the header declares (0 if it declares none)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / av.time_base
    return 0.0


def _decode_within_budget(container: Any, stream: Any, rate: int) -> Pcm:
    resampler = MonoResampler(rate)
    parts: list[Pcm] = []
    budget = round(MAX_BLOB_AUDIO_SECONDS * rate)
    decoded = 0
    for frame in container.decode(stream):
        if frame.sample_rate != rate:
            raise UndecodableAudio("implausible_format", "the sample rate changes mid-file")
        decoded += frame.samples
        if decoded > budget:
            raise _over_budget(decoded / rate, at_least=True)
        parts.append(resampler.resample(frame_to_mono(frame)))
    parts.append(resampler.flush())
    return np.concatenate(parts)


def _over_budget(seconds: float, at_least: bool = False) -> UndecodableAudio:
    more = "more than " if at_least else ""
    return UndecodableAudio(
        "over_budget",
        f"the file holds {more}{seconds:.0f} s of audio; one blob may hold at most "
        f"{MAX_BLOB_AUDIO_SECONDS:g} s",
    )
