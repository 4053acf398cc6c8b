"""Incremental WebM/Matroska demuxer: stream bytes in, in any cuts, audio frames out.

The recorder's blobs are cut wherever it flushed, usually inside a SimpleBlock, so the demuxer
keeps the unparsed tail and waits for more bytes instead of failing. It reads the element tree
flat: master elements (Segment, Cluster, Tracks, ...) are entered, leaves are read whole. After
lost bytes (a skipped seq, corruption) it resynchronises on the next Cluster, or on a
SimpleBlock whose successor also parses, so one gap costs about the gap and no more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UndecodableAudio
from .budget import ParseBudget
from .events import OPUS, DemuxEvent, Packet, Resynced, StreamStarted

EBML_HEADER = 0x1A45DFA3
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
SEGMENT = 0x18538067
CLUSTER = 0x1F43B675
CLUSTER_MAGIC = b"\x1f\x43\xb6\x75"
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
AUDIO = 0xE1
BLOCK_GROUP = 0xA0
BLOCK = 0xA1
SIMPLE_BLOCK = 0xA3
TIMECODE = 0xE7
INFO = 0x1549A966
TIMECODE_SCALE = 0x2AD7B1
TRACK_NUMBER = 0xD7
TRACK_TYPE = 0x83
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
CHANNELS = 0x9F

MASTER_IDS = frozenset({SEGMENT, CLUSTER, TRACKS, TRACK_ENTRY, AUDIO, BLOCK_GROUP, INFO})
TRACK_AUDIO = 2
# Leaves we must hold whole in memory. Anything larger is skipped without buffering if it is an
# element we do not need, and treated as corruption if it is one we do.
MAX_HELD_LEAF_BYTES = 1 << 20
# A skip this large in an audio stream means the size field is garbage.
MAX_SKIP_BYTES = 64 << 20
UNKNOWN_SIZE = -1
_NOT_255 = re.compile(b"[^\xff]")


@dataclass
class AudioTrack:
    number: int = 0
    track_type: int = 0
    codec_id: str = ""
    codec_private: bytes = b""
    channels: int = 0


def chrome_opus_track() -> AudioTrack:
    """The one track Chrome's MediaRecorder writes for `audio/webm;codecs=opus`: track 1, Opus
    at 48 kHz. The channel count is left unknown: each Opus packet's TOC byte says it."""
    return AudioTrack(number=1, track_type=TRACK_AUDIO, codec_id="A_OPUS")


def _stream_started(track: AudioTrack) -> StreamStarted:
    codec = OPUS if track.codec_id == "A_OPUS" else track.codec_id
    return StreamStarted(codec, track.codec_private, track.channels)


def read_vint(buf: bytes | bytearray, pos: int, keep_marker: bool) -> tuple[int, int] | None:
    """EBML variable-length integer at `pos`: (value, length), or None when bytes are missing.

    Raises ValueError for a first byte of 0, which no valid vint has.
    """
    if pos >= len(buf):
        return None
    first = buf[pos]
    if first == 0:
        raise ValueError("invalid vint")
    length = 9 - first.bit_length()
    if pos + length > len(buf):
        return None
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for b in buf[pos + 1 : pos + length]:
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return UNKNOWN_SIZE, length
    return value, length


def _read_element_header(buf: bytearray, pos: int) -> tuple[int, int, int] | None:
    """(element id, data size, header length) at pos, or None if incomplete."""
    ident = read_vint(buf, pos, keep_marker=True)
    if ident is None:
        return None
    if ident[1] > 4:
        raise ValueError("element id longer than 4 bytes")
    size = read_vint(buf, pos + ident[1], keep_marker=False)
    if size is None:
        return None
    return ident[0], size[0], ident[1] + size[1]


def _uint(data: bytes) -> int:
    return int.from_bytes(data, "big") if data else 0


@dataclass
class _StreamState:
    timecode_scale_ns: int = 1_000_000
    tracks: list[AudioTrack] = field(default_factory=list)
    selected: AudioTrack | None = None
    cluster_timecode: int = 0
    # After resyncing on a bare SimpleBlock, the Cluster (and so the time base) may have
    # changed in the lost bytes: block times are unknown until the next Cluster Timecode.
    cluster_uncertain: bool = False


class WebmDemuxer:
    """Feed bytes in stream order with `feed`; it returns the events they complete."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip_remaining = 0
        self._state = _StreamState()
        self._in_track_entry = False
        self._resyncing = False
        self.header_seen = False
        self._budget = ParseBudget()
        # Next offset of each resync anchor in the buffer, as (searched from, found at or -1),
        # valid within one `feed`: each search starts past the last, so resync stays linear.
        self._anchor_at: dict[bytes, tuple[int, int]] = {}

    @classmethod
    def joining_mid_stream(cls, track: AudioTrack) -> WebmDemuxer:
        """A demuxer for bytes from the middle of a stream whose header went elsewhere (an
        earlier process, an evicted session): it assumes `track` and resyncs on the next
        Cluster or SimpleBlock of it. Block times are unknown until a Cluster Timecode."""
        demuxer = cls()
        demuxer.header_seen = True
        demuxer._state.tracks.append(track)
        demuxer._state.selected = track
        demuxer._resyncing = True
        return demuxer

    def mark_discontinuity(self) -> None:
        """Bytes before the next `feed` are missing: drop the partial element and resync."""
        self._buf.clear()
        self._skip_remaining = 0
        self._resyncing = self.header_seen

    def feed(self, data: bytes) -> list[DemuxEvent]:
        """Parse what `data` completes. Raises UndecodableAudio("over_budget") if the blob
        costs more than MAX_PARSE_STEPS_PER_BLOB; the demuxer then drops what it holds and
        resyncs on the next blob."""
        self._buf += data
        self._budget = ParseBudget()
        self._anchor_at.clear()
        try:
            return self._parse_buffer()
        except UndecodableAudio:
            self.mark_discontinuity()
            raise

    def _parse_buffer(self) -> list[DemuxEvent]:
        events: list[DemuxEvent] = []
        pos = 0
        while True:
            self._budget.spend()
            if self._skip_remaining:
                step = min(self._skip_remaining, len(self._buf) - pos)
                pos += step
                self._skip_remaining -= step
                if self._skip_remaining:
                    break
            if self._resyncing:
                resume_at, wait_from = self._find_resync_point(pos)
                if resume_at is None:
                    if wait_from > pos:
                        events.append(Resynced(wait_from - pos))
                    pos = wait_from
                    break
                if resume_at > pos:
                    events.append(Resynced(resume_at - pos))
                pos = resume_at
                self._resyncing = False
            try:
                consumed = self._parse_one(pos, events)
            except ValueError:
                self._resyncing = True
                pos += 1
                continue
            if consumed is None:
                break
            pos += consumed
        del self._buf[:pos]
        if len(self._buf) > MAX_HELD_LEAF_BYTES + 64:
            # Nothing parsed for a megabyte: the stream is garbage here; look for a fresh start.
            self._resyncing = True
        return events

    # --- parsing --------------------------------------------------------------------------------

    def _parse_one(self, pos: int, events: list[DemuxEvent]) -> int | None:
        """Consume one element header (masters) or element (leaves); None if bytes are missing."""
        head = _read_element_header(self._buf, pos)
        if head is None:
            return None
        ident, size, head_len = head
        if ident == EBML_HEADER:
            return self._parse_ebml_header(pos, size, head_len)
        if not self.header_seen:
            raise ValueError("stream does not start with an EBML header")
        if ident in MASTER_IDS:
            self._enter_master(ident, events)
            return head_len
        if size == UNKNOWN_SIZE:
            raise ValueError("unknown size on a leaf element")
        needed = ident in (SIMPLE_BLOCK, BLOCK, TIMECODE) or self._is_track_field(ident)
        if needed:
            if size > MAX_HELD_LEAF_BYTES:
                raise ValueError("implausibly large element")
            if pos + head_len + size > len(self._buf):
                return None
            body = bytes(self._buf[pos + head_len : pos + head_len + size])
            self._handle_leaf(ident, body, events)
            return head_len + size
        if size > MAX_SKIP_BYTES:
            raise ValueError("implausibly large element")
        self._skip_remaining = size
        return head_len

    def _parse_ebml_header(self, pos: int, size: int, head_len: int) -> int | None:
        if size == UNKNOWN_SIZE or size > 4096:
            raise ValueError("implausible EBML header size")
        if pos + head_len + size > len(self._buf):
            return None
        # A new header starts a new stream: a recorder restart inside the same session.
        self._state = _StreamState()
        self._in_track_entry = False
        self.header_seen = True
        return head_len + size

    def _is_track_field(self, ident: int) -> bool:
        return ident == TIMECODE_SCALE or (
            self._in_track_entry
            and ident
            in (
                TRACK_NUMBER,
                TRACK_TYPE,
                CODEC_ID,
                CODEC_PRIVATE,
                CHANNELS,
            )
        )

    def _enter_master(self, ident: int, events: list[DemuxEvent]) -> None:
        if ident == TRACK_ENTRY:
            self._state.tracks.append(AudioTrack())
            self._in_track_entry = True
        elif ident == CLUSTER:
            self._in_track_entry = False
            self._select_track(events)

    def _select_track(self, events: list[DemuxEvent]) -> None:
        if self._state.selected is not None:
            return
        for track in self._state.tracks:
            if track.track_type == TRACK_AUDIO or track.codec_id.startswith("A_"):
                self._state.selected = track
                events.append(_stream_started(track))
                return

    def _handle_leaf(self, ident: int, body: bytes, events: list[DemuxEvent]) -> None:
        state = self._state
        if ident == TIMECODE:
            state.cluster_timecode = _uint(body)
            state.cluster_uncertain = False
        elif ident == TIMECODE_SCALE:
            state.timecode_scale_ns = _uint(body) or 1_000_000
        elif ident in (SIMPLE_BLOCK, BLOCK):
            self._in_track_entry = False
            self._select_track(events)
            self._handle_block(body, events, simple=ident == SIMPLE_BLOCK)
        else:
            self._set_track_field(state.tracks[-1], ident, body)

    @staticmethod
    def _set_track_field(track: AudioTrack, ident: int, body: bytes) -> None:
        if ident == TRACK_NUMBER:
            track.number = _uint(body)
        elif ident == TRACK_TYPE:
            track.track_type = _uint(body)
        elif ident == CODEC_ID:
            track.codec_id = body.rstrip(b"\x00").decode("ascii", "replace")
        elif ident == CODEC_PRIVATE:
            track.codec_private = body
        elif ident == CHANNELS:
            track.channels = _uint(body)

    def _handle_block(self, body: bytes, events: list[DemuxEvent], simple: bool) -> None:
        track_no = read_vint(body, 0, keep_marker=False)
        if track_no is None or len(body) < track_no[1] + 3:
            raise ValueError("truncated block")
        selected = self._state.selected
        if selected is None or track_no[0] != selected.number:
            return
        at = track_no[1]
        relative = int.from_bytes(body[at : at + 2], "big", signed=True)
        flags = body[at + 2]
        payload = body[at + 3 :]
        state = self._state
        ts: int | None = None
        if not state.cluster_uncertain:
            ts = (state.cluster_timecode + relative) * state.timecode_scale_ns
        lacing = (flags >> 1) & 0x03
        frames = [payload] if lacing == 0 else _unlace(payload, lacing)
        self._budget.spend(len(frames))
        for frame in frames:
            if frame:
                events.append(Packet(frame, ts))

    # --- resynchronisation ----------------------------------------------------------------------

    def _find_resync_point(self, pos: int) -> tuple[int | None, int]:
        """(offset to resume parsing at, or None; offset from which bytes must be kept).

        Resumes at the next EBML header, Cluster, or SimpleBlock of our track whose successor
        also begins like a block. A candidate whose successor has not arrived yet is kept.
        """
        buf = self._buf
        anchors = [
            i
            for i in (self._find_anchor(EBML_MAGIC, pos), self._find_anchor(CLUSTER_MAGIC, pos))
            if i >= 0
        ]
        anchor = min(anchors) if anchors else len(buf)
        selected = self._state.selected
        i = buf.find(b"\xa3", pos, anchor) if selected is not None else -1
        while selected is not None and i >= 0:
            self._budget.spend()
            end = self._plausible_block_end(i, selected.number)
            if end is not None:
                if end >= len(buf):
                    return None, i
                if buf[end] in (SIMPLE_BLOCK, BLOCK_GROUP, 0x1F, 0x1A):
                    self._state.cluster_uncertain = True
                    return i, i
            i = buf.find(b"\xa3", i + 1, anchor)
        if anchors:
            return anchor, anchor
        # Keep a few trailing bytes: a magic may be split across two blobs.
        return None, max(pos, len(buf) - 8)

    def _find_anchor(self, magic: bytes, pos: int) -> int:
        """buf.find(magic, pos), remembered: the buffer does not change within a feed, so a
        later search from further on reuses the last answer instead of rescanning the rest of
        the buffer (which made each resync cost the whole buffer: quadratic in the blob)."""
        searched_from, found_at = self._anchor_at.get(magic, (-1, -1))
        if 0 <= searched_from <= pos and (found_at < 0 or found_at >= pos):
            return found_at
        found_at = self._buf.find(magic, pos)
        self._anchor_at[magic] = (pos, found_at)
        return found_at

    def _plausible_block_end(self, i: int, track_number: int) -> int | None:
        buf = self._buf
        try:
            size = read_vint(buf, i + 1, keep_marker=False)
            if size is None or not 4 <= size[0] <= 16384:
                return None
            track = read_vint(buf, i + 1 + size[1], keep_marker=False)
        except ValueError:
            return None
        if track is None or track[0] != track_number:
            return None
        return i + 1 + size[1] + size[0]


def _unlace(payload: bytes, lacing: int) -> list[bytes]:
    """Split a laced block (Xiph = 1, fixed = 2, EBML = 3) into its frames."""
    if not payload:
        raise ValueError("empty laced block")
    count = payload[0] + 1
    pos = 1
    sizes: list[int] = []
    if lacing == 2:
        body = len(payload) - 1
        if body % count:
            raise ValueError("fixed lacing does not divide the block")
        sizes = [body // count] * count
    elif lacing == 1:
        for _ in range(count - 1):
            # A size is a run of 255s and one smaller byte; the run is found in C, so a
            # megabyte of 255s costs no Python loop.
            end = _NOT_255.search(payload, pos)
            if end is None:
                raise ValueError("truncated Xiph lacing")
            stop = end.start()
            sizes.append(255 * (stop - pos) + payload[stop])
            pos = stop + 1
        sizes.append(len(payload) - pos - sum(sizes))
    else:
        first = read_vint(payload, pos, keep_marker=False)
        if first is None:
            raise ValueError("truncated EBML lacing")
        sizes.append(first[0])
        pos += first[1]
        for _ in range(count - 2):
            raw = read_vint(payload, pos, keep_marker=False)
            if raw is None:
                raise ValueError("truncated EBML lacing")
            bias = (1 << (7 * raw[1] - 1)) - 1
            sizes.append(sizes[-1] + raw[0] - bias)
            pos += raw[1]
        sizes.append(len(payload) - pos - sum(sizes))
    if any(s < 0 for s in sizes) or pos + sum(sizes) != len(payload):
        raise ValueError("lace sizes do not add up")
    frames = []
    for size in sizes:
        frames.append(payload[pos : pos + size])
        pos += size
    return frames
