"""Incremental Ogg demuxer for Opus streams: stream bytes in, in any cuts, Opus packets out."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ..errors import UndecodableAudio
from .budget import ParseBudget
from .events import OPUS, DemuxEvent, Packet, Resynced, StreamStarted

OGG_MAGIC = b"OggS"
PAGE_HEADER_BYTES = 27
FLAG_CONTINUED = 0x01
FLAG_BEGIN = 0x02
MAX_PACKET_BYTES = 1 << 20
# A checksum over this many page bytes costs about one parse step (C speed).
_CRC_BYTES_PER_STEP = 8192


# Ogg's CRC is CRC-32 with the polynomial zlib uses, but not bit-reflected and with no
# inversions. zlib computes the reflected one in C, so reflect the input bytes, undo zlib's
# inversions, and reflect the result: the same checksum, in C, at memory speed.
_REFLECT_BYTE = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def ogg_crc(data: bytes | bytearray) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, not reflected, initial 0)."""
    reflected = zlib.crc32(bytes(data).translate(_REFLECT_BYTE), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


@dataclass(frozen=True)
class OpusHead:
    channels: int
    raw: bytes


def starts_ogg_stream(blob: bytes) -> bool:
    """True if the blob opens with the first page of a logical stream (beginning-of-stream
    flag). Any other page is the continuation of a stream, even at the start of a blob."""
    return blob.startswith(OGG_MAGIC) and len(blob) > 5 and blob[5] & FLAG_BEGIN != 0


def parse_opus_head(packet: bytes) -> OpusHead:
    if len(packet) < 19 or not packet.startswith(b"OpusHead"):
        raise ValueError("not an OpusHead packet")
    channels = packet[9]
    if channels == 0:
        raise ValueError("OpusHead with zero channels")
    return OpusHead(channels=channels, raw=packet)


class OggOpusDemuxer:
    """Feed bytes in stream order; returns the packets of the first Opus logical stream."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._partial = bytearray()
        self._serial: int | None = None
        self._packets_in_stream = 0
        self._drop_continued = False
        self._budget = ParseBudget()
        # Why the stream cannot be decoded (its first packet is not an OpusHead), until a
        # new stream begins; its pages are dropped unread meanwhile.
        self._unusable: str | None = None
        self.header_seen = False

    @property
    def held_bytes(self) -> int:
        """Bytes kept for a page (or packet) that later blobs must complete."""
        return len(self._buf) + len(self._partial)

    def mark_discontinuity(self) -> None:
        self._buf.clear()
        self._partial.clear()
        # The first page after lost bytes may continue a packet whose start we never saw.
        self._drop_continued = True

    def feed(self, data: bytes) -> list[DemuxEvent]:
        """Parse what `data` completes. Raises UndecodableAudio("corrupt_stream") while the
        stream is not Opus (its pages are consumed and dropped, so nothing accumulates), and
        UndecodableAudio("over_budget") for a blob that costs more than
        MAX_PARSE_STEPS_PER_BLOB (what the demuxer holds is then dropped)."""
        self._buf += data
        self._budget = ParseBudget()
        try:
            events = self._parse_buffer()
        except UndecodableAudio:
            self.mark_discontinuity()
            raise
        if self._unusable is not None:
            raise UndecodableAudio("corrupt_stream", f"Ogg stream is not Opus: {self._unusable}")
        return events

    def _parse_buffer(self) -> list[DemuxEvent]:
        events: list[DemuxEvent] = []
        pos = 0
        while True:
            self._budget.spend()
            start = self._buf.find(OGG_MAGIC, pos)
            if start < 0:
                keep = max(pos, len(self._buf) - 3)
                if keep > pos:
                    events.append(Resynced(keep - pos))
                pos = keep
                break
            if start > pos:
                events.append(Resynced(start - pos))
                self._partial.clear()
            pos = start
            consumed = self._parse_page(pos, events)
            if consumed is None:
                break
            if consumed == 0:  # not a real page header: skip the magic and search on
                pos += 1
                continue
            pos += consumed
        del self._buf[:pos]
        return events

    def _parse_page(self, pos: int, events: list[DemuxEvent]) -> int | None:
        buf = self._buf
        if pos + PAGE_HEADER_BYTES > len(buf):
            return None
        version, flags = buf[pos + 4], buf[pos + 5]
        serial = struct.unpack_from("<I", buf, pos + 14)[0]
        # Cheap fields first: only a page that could start or continue our stream is worth
        # its checksum. Pages of other logical streams are searched through like data.
        ours = serial == self._serial if flags & FLAG_BEGIN == 0 else True
        if version != 0 or flags & ~0x07 or not ours:
            return 0
        n_segments = buf[pos + 26]
        table_end = pos + PAGE_HEADER_BYTES + n_segments
        if table_end > len(buf):
            return None
        lacing = buf[pos + PAGE_HEADER_BYTES : table_end]
        page_end = table_end + sum(lacing)
        if page_end > len(buf):
            return None
        page = bytearray(buf[pos:page_end])
        stored_crc = struct.unpack_from("<I", page, 22)[0]
        page[22:26] = b"\0\0\0\0"
        self._budget.spend(1 + len(page) // _CRC_BYTES_PER_STEP + n_segments // 16)
        if ogg_crc(page) != stored_crc:
            return 0  # "OggS" inside data, or a damaged page: search on
        if flags & FLAG_BEGIN:
            self._unusable = None
            self._serial = serial
            self._packets_in_stream = 0
            self._partial.clear()
        if serial != self._serial:
            return page_end - pos
        if flags & FLAG_CONTINUED == 0:
            self._partial.clear()
        dropping = bool(flags & FLAG_CONTINUED) and self._drop_continued
        self._drop_continued = False
        body_pos = table_end
        for seg in lacing:
            if not dropping:
                self._partial += buf[body_pos : body_pos + seg]
            body_pos += seg
            if len(self._partial) > MAX_PACKET_BYTES:
                self._partial.clear()
                return 0
            if seg < 255:
                if not dropping:
                    self._emit_packet(bytes(self._partial), events)
                dropping = False
                self._partial.clear()
        return page_end - pos

    def _emit_packet(self, packet: bytes, events: list[DemuxEvent]) -> None:
        index = self._packets_in_stream
        self._packets_in_stream += 1
        if index == 0:
            try:
                head = parse_opus_head(packet)
            except ValueError as exc:
                # Drop the stream: its later pages no longer match `_serial` and are skipped.
                self._unusable = str(exc)
                self._serial = None
                self.header_seen = False
                return
            self.header_seen = True
            events.append(StreamStarted(OPUS, head.raw, head.channels))
        elif index == 1 and packet.startswith(b"OpusTags"):
            return
        elif self.header_seen:
            # Pages carry granule positions, not packet times: after lost bytes the decoder
            # fills the gap from the audio per blob instead.
            events.append(Packet(packet, None))
