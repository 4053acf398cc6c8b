"""Incremental Ogg demuxer for Opus streams: stream bytes in, in any cuts, Opus packets out."""

from __future__ import annotations

import struct
from dataclasses import dataclass

OGG_MAGIC = b"OggS"
PAGE_HEADER_BYTES = 27
FLAG_CONTINUED = 0x01
FLAG_BEGIN = 0x02
MAX_PACKET_BYTES = 1 << 20


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def ogg_crc(data: bytes | bytearray) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, not reflected, initial 0)."""
    crc = 0
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[((crc >> 24) ^ byte) & 0xFF]
    return crc


@dataclass(frozen=True)
class OpusHead:
    channels: int
    pre_skip: int
    input_sample_rate: int
    raw: bytes


@dataclass(frozen=True)
class OggPacket:
    data: bytes
    granule: int


@dataclass(frozen=True)
class OggStreamStarted:
    head: OpusHead


@dataclass(frozen=True)
class OggResynced:
    dropped_bytes: int


OggEvent = OggPacket | OggStreamStarted | OggResynced


def parse_opus_head(packet: bytes) -> OpusHead:
    if len(packet) < 19 or not packet.startswith(b"OpusHead"):
        raise ValueError("not an OpusHead packet")
    channels = packet[9]
    pre_skip, rate = struct.unpack_from("<HI", packet, 10)
    if channels == 0:
        raise ValueError("OpusHead with zero channels")
    return OpusHead(channels=channels, pre_skip=pre_skip, input_sample_rate=rate, raw=packet)


class OggOpusDemuxer:
    """Feed bytes in stream order; returns the packets of the first Opus logical stream."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._partial = bytearray()
        self._serial: int | None = None
        self._packets_in_stream = 0
        self._drop_continued = False
        self.header_seen = False

    def mark_discontinuity(self) -> None:
        self._buf.clear()
        self._partial.clear()
        # The first page after lost bytes may continue a packet whose start we never saw.
        self._drop_continued = True

    def feed(self, data: bytes) -> list[OggEvent]:
        self._buf += data
        events: list[OggEvent] = []
        pos = 0
        while True:
            start = self._buf.find(OGG_MAGIC, pos)
            if start < 0:
                keep = max(pos, len(self._buf) - 3)
                if keep > pos:
                    events.append(OggResynced(keep - pos))
                pos = keep
                break
            if start > pos:
                events.append(OggResynced(start - pos))
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

    def _parse_page(self, pos: int, events: list[OggEvent]) -> int | None:
        buf = self._buf
        if pos + PAGE_HEADER_BYTES > len(buf):
            return None
        version, flags = buf[pos + 4], buf[pos + 5]
        if version != 0:
            return 0
        granule, serial = struct.unpack_from("<qI", buf, pos + 6)
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
        if ogg_crc(page) != stored_crc:
            return 0  # "OggS" inside data, or a damaged page: search on
        if flags & FLAG_BEGIN:
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
                    self._emit_packet(bytes(self._partial), granule, events)
                dropping = False
                self._partial.clear()
        return page_end - pos

    def _emit_packet(self, packet: bytes, granule: int, events: list[OggEvent]) -> None:
        index = self._packets_in_stream
        self._packets_in_stream += 1
        if index == 0:
            head = parse_opus_head(packet)
            self.header_seen = True
            events.append(OggStreamStarted(head))
        elif index == 1 and packet.startswith(b"OpusTags"):
            return
        elif self.header_seen:
            events.append(OggPacket(packet, granule))
