"""The real-time corpus in bench/corpus/: each recording's blobs as Chromium's MediaRecorder
made them, when each became available, and the reference words with their times.

bench/corpus/README.md describes the files; this module only reads them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "corpus"


@dataclass(frozen=True)
class Blob:
    seq: int | None  # None: the blob stop() flushed at a restart, which the extension never sends
    data: bytes
    at_seconds: float  # when the page had it, seconds after the recording began
    stream: int  # 0, then 1 after a recorder restart


@dataclass(frozen=True)
class RefWord:
    """One word of the reference (the offline pass of tiny.en over the source audio)."""

    text: str  # as the model wrote it
    tokens: tuple[str, ...]  # normalised (textnorm.tokens); may be empty for punctuation
    session_end_seconds: float  # on the session's audio timeline (what the server counts)
    audio_end_seconds: float  # when its end was played, on the blobs' at_seconds clock
    sent: bool  # False: its audio was in the blob dropped at a restart


@dataclass(frozen=True)
class Recording:
    name: str
    holdout: bool
    kind: str
    text: str  # the transcript that ships with the source audio
    blobs: list[Blob]
    words: list[RefWord]
    offline: dict[str, Any]  # offline transcripts and WERs (corpus_reference.py)
    index: dict[str, Any]

    @property
    def sent(self) -> list[Blob]:
        """The blobs the extension sends, in seq order."""
        return [b for b in self.blobs if b.seq is not None]

    @property
    def duration_seconds(self) -> float:
        return float(self.index["source_seconds"])


def names(corpus: Path = CORPUS) -> list[str]:
    return sorted(p.stem for p in corpus.glob("*.json"))


def load(name: str, corpus: Path = CORPUS) -> Recording:
    index = json.loads((corpus / f"{name}.json").read_text())
    parts = (corpus / index["parts_file"]).read_bytes()
    if hashlib.sha256(parts).hexdigest() != index["parts_sha256"]:
        raise ValueError(f"{name}: {index['parts_file']} does not match its index")
    blobs = [
        Blob(
            seq=b["seq"],
            data=parts[b["offset"] : b["offset"] + b["bytes"]],
            at_seconds=float(b["at_seconds"]),
            stream=int(b["stream"]),
        )
        for b in index["blobs"]
    ]
    reference = index.get("reference", {})
    words = [
        RefWord(
            text=w["word"],
            tokens=tuple(w["tokens"]),
            session_end_seconds=float(w["session_end_seconds"]),
            audio_end_seconds=float(w["audio_end_seconds"]),
            sent=bool(w["sent"]),
        )
        for w in reference.get("words", [])
    ]
    return Recording(
        name=index["name"],
        holdout=bool(index["holdout"]),
        kind=index["kind"],
        text=index["text"],
        blobs=blobs,
        words=words,
        offline=reference.get("offline", {}),
        index=index,
    )


def select(wanted: list[str] | None, holdout: bool, corpus: Path = CORPUS) -> list[Recording]:
    """The named recordings, else every tuning one (and the holdout ones only if asked)."""
    if wanted:
        return [load(n, corpus) for n in wanted]
    out = [load(n, corpus) for n in names(corpus)]
    return [r for r in out if holdout or not r.holdout]
