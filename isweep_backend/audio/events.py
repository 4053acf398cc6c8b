"""What a streaming demuxer reports as bytes come in: the events both containers share, so
the decoder has one feed path whatever the container."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

OPUS = "opus"


@dataclass(frozen=True)
class StreamStarted:
    """A new stream began (its first header, or a recorder restart) and its audio is known."""

    codec: str  # OPUS, or the container's name for another codec (refused by the decoder)
    codec_private: bytes  # the decoder's extradata: the OpusHead
    channels: int  # 0 where only the packets say


@dataclass(frozen=True)
class Packet:
    """One codec packet of the stream's audio."""

    data: bytes
    # None where the container gives no time, or bytes were lost and it is not known for sure.
    timestamp_ns: int | None


@dataclass(frozen=True)
class Resynced:
    """Bytes were skipped to find the next parsable point; `dropped_bytes` were thrown away."""

    dropped_bytes: int


DemuxEvent = StreamStarted | Packet | Resynced


class Demuxer(Protocol):
    def feed(self, data: bytes) -> list[DemuxEvent]:
        """The events the bytes complete, in stream order. Raises UndecodableAudio for a blob
        the stream cannot take (over its parse budget, a stream that is not Opus)."""
        ...

    def mark_discontinuity(self) -> None:
        """Bytes before the next `feed` are missing: drop what is partial and resync."""
        ...
