"""The real-time benchmark's corpus (bench/corpus/) is whole and consistent, and its scoring
(bench/scoring.py, bench/textnorm.py) counts lag, lost, invented and repeated words rightly on
small hand-made cases. Fast: no model, no server."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from bench import corpus, scoring, textnorm

EBML_MAGIC = b"\x1a\x45\xdf\xa3"
NAMES = corpus.names()


def index_of(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((corpus.CORPUS / f"{name}.json").read_text())
    return data


# --- the corpus ---------------------------------------------------------------------------


def test_corpus_has_tuning_and_holdout_recordings_of_each_kind() -> None:
    recordings = [corpus.load(n) for n in NAMES]
    for holdout in (False, True):
        kinds = {r.kind for r in recordings if r.holdout == holdout}
        assert {"continuous", "silences", "restart"} <= kinds, (holdout, kinds)
    assert corpus.select(None, holdout=False) == [r for r in recordings if not r.holdout]
    assert any(r.kind == "continuous" and r.duration_seconds >= 60 for r in recordings)
    total = sum(r.duration_seconds for r in recordings)
    assert total >= 180, total  # several minutes in all
    size = sum((corpus.CORPUS / index_of(n)["parts_file"]).stat().st_size for n in NAMES)
    assert size < 5_000_000, size  # small enough to commit


@pytest.mark.parametrize("name", NAMES)
def test_every_blob_is_in_its_parts_file_in_order(name: str) -> None:
    index = index_of(name)
    parts = (corpus.CORPUS / index["parts_file"]).read_bytes()
    assert hashlib.sha256(parts).hexdigest() == index["parts_sha256"]
    offset = 0
    for blob in index["blobs"]:
        assert blob["offset"] == offset and blob["bytes"] > 0
        data = parts[offset : offset + blob["bytes"]]
        assert hashlib.sha256(data).hexdigest() == blob["sha256"]
        offset += blob["bytes"]
    assert offset == len(parts)
    rec = corpus.load(name)
    assert [b.seq for b in rec.sent] == list(range(len(rec.sent)))
    times = [b.at_seconds for b in rec.blobs]
    assert times == sorted(times)
    # Only the first blob of each WebM stream carries the header.
    firsts = [k for k, b in enumerate(rec.blobs) if b.data.startswith(EBML_MAGIC)]
    assert firsts == [0] + [
        k for k in range(1, len(rec.blobs)) if rec.blobs[k].stream != rec.blobs[k - 1].stream
    ]


@pytest.mark.parametrize("name", NAMES)
def test_restart_drops_exactly_the_blob_stop_flushed(name: str) -> None:
    rec = corpus.load(name)
    dropped = [k for k, b in enumerate(rec.blobs) if b.seq is None]
    if rec.kind != "restart":
        assert dropped == [] and {b.stream for b in rec.blobs} == {0}
        return
    assert len(dropped) == 1
    k = dropped[0]
    assert rec.blobs[k].stream == 0 and rec.blobs[k + 1].stream == 1
    assert rec.blobs[k + 1].data.startswith(EBML_MAGIC)
    assert 2 < k < len(rec.blobs) - 3  # mid-recording, with speech on both sides
    # The restart loses real audio: some reference words were never sent.
    assert any(not w.sent for w in rec.words)


@pytest.mark.parametrize("name", NAMES)
def test_reference_words_and_transcripts_are_present(name: str) -> None:
    rec = corpus.load(name)
    index = rec.index
    assert textnorm.tokens(rec.text) and rec.holdout in (True, False)
    assert rec.offline["source_text"] and 0 <= rec.offline["sent_wer"] < 0.5
    session_seconds = index["reference"]["session_seconds"]
    sent = [w for w in rec.words if w.sent]
    assert len(sent) >= 0.8 * len(textnorm.tokens(rec.text))
    ends = [w.session_end_seconds for w in sent]
    assert ends == sorted(ends) and ends[0] > 0 and ends[-1] <= session_seconds
    # Each stream's offset was found the same at every probe: no audio lost inside a stream.
    for offset in index["reference"]["stream_offsets"]:
        assert offset["spread_seconds"] <= 0.03, offset
    for clip in index["clips"]:
        assert clip["text"] and clip["source"]


# --- the normaliser -----------------------------------------------------------------------


def test_normaliser_makes_spoken_forms_equal() -> None:
    assert textnorm.tokens("And Mr. Dashwood, 10 cold-hearted!") == [
        "and",
        "mister",
        "dashwood",
        "ten",
        "cold",
        "hearted",
    ]
    assert textnorm.tokens("Feed\u2019st thy world's 42") == [
        "feed'st",
        "thy",
        "world's",
        "forty",
        "two",
    ]
    assert textnorm.wer("go forward ten meters", "Go forward 10 meters.") == 0.0
    assert textnorm.wer("a b c d", "a c d e") == 0.5


# --- the scoring --------------------------------------------------------------------------


def ref(*words: tuple[str, float]) -> list[scoring.Token]:
    """Reference words (text, end on the session timeline); their audio ends at the same time."""
    return scoring.reference_tokens([(text, end, end, True) for text, end in words])


def got(*words: tuple[str, float, float]) -> list[scoring.Token]:
    """Delivered words: (text, end on the session timeline, arrival)."""
    return [scoring.Token(t, end, at) for text, end, at in words for t in textnorm.tokens(text)]


def test_lag_is_arrival_minus_the_end_of_the_words_audio() -> None:
    result = scoring.score(
        ref(("the", 1.0), ("speaker", 1.5), ("came", 2.0)),
        got(("The", 1.1, 2.2), ("speaker", 1.6, 2.2), ("came", 2.0, 3.5)),
    )
    assert result.lags == pytest.approx([1.2, 0.7, 1.5])
    assert not result.lost and not result.invented and not result.twice


def test_a_word_never_delivered_is_lost_and_a_stray_one_invented() -> None:
    result = scoring.score(
        ref(("the", 1.0), ("speaker", 1.5), ("came", 2.0), ("back", 2.4)),
        got(("the", 1.0, 2.0), ("came", 2.0, 3.0), ("back", 2.4, 3.0), ("ketamine", 6.0, 7.0)),
    )
    assert [t.text for t in result.lost] == ["speaker"]
    assert [t.text for t in result.invented] == ["ketamine"]
    assert result.twice == [] and len(result.lags) == 3


def test_a_word_delivered_again_counts_twice_not_invented() -> None:
    result = scoring.score(
        ref(("ask", 5.0), ("not", 5.4)),
        got(("ask", 5.0, 6.0), ("not", 5.4, 6.0), ("not", 5.5, 7.0)),
    )
    assert [t.text for t in result.twice] == ["not"] and result.invented == []
    assert result.lost == []


def test_a_real_repeat_is_two_words_and_one_missing_repeat_is_lost() -> None:
    both = scoring.score(ref(("no", 1.0), ("no", 2.6)), got(("No.", 1.0, 2.0), ("No!", 2.6, 3.5)))
    assert both.lost == [] and both.twice == [] and both.lags == pytest.approx([1.0, 0.9])
    # The second "No!" dropped: lost, and the first is not taken for it.
    one = scoring.score(ref(("no", 1.0), ("no", 2.6)), got(("No.", 1.0, 2.0)))
    assert [t.end_seconds for t in one.lost] == [2.6]


def test_same_text_far_away_in_time_is_not_a_match() -> None:
    result = scoring.score(ref(("country", 3.0)), got(("country", 9.0, 10.0)))
    assert [t.text for t in result.lost] == ["country"]
    assert [t.text for t in result.invented] == ["country"]
    assert result.lags == []


def test_a_different_word_in_place_is_substituted_not_lost() -> None:
    result = scoring.score(
        ref(("ill", 1.0), ("disposed", 1.6)), got(("ill", 1.0, 2.0), ("dispose", 1.5, 2.0))
    )
    assert result.substituted == 1 and result.lost == [] and result.invented == []


def test_the_extension_drops_segments_that_go_back_in_time() -> None:
    def seg(text: str, end: float) -> dict[str, Any]:
        return {"text": text, "start_seconds": end - 0.3, "end_seconds": end}

    kept, dropped = scoring.extension_keeps(
        [
            (2.0, [seg("one two", 1.5)]),
            (3.0, [seg("three", 2.5), seg("", 2.6)]),
            (3.1, [seg("two again", 1.4)]),  # more than 0.25 s back: dropped
            (4.0, [seg("four", 2.4)]),  # 0.1 s back: kept
        ]
    )
    assert [t.text for t in kept] == ["one", "two", "three", "four"]
    assert [t.at_seconds for t in kept] == [2.0, 2.0, 3.0, 4.0]
    assert dropped == 2


def test_a_word_cut_by_a_restart_is_neither_lost_nor_invented() -> None:
    words = [("thy", 20.0, 20.0, True), ("light's", 20.4, 20.4, False), ("flame", 21.0, 21.0, True)]
    reference = scoring.reference_tokens(words)
    carried = scoring.score(reference, got(("thy", 20.0, 21.0), ("light's", 20.4, 21.0)))
    assert carried.invented == [] and [t.text for t in carried.lost] == ["flame"]
    assert carried.reference == 2 and carried.lags == pytest.approx([1.0])
    missing = scoring.score(reference, got(("thy", 20.0, 21.0), ("flame", 21.0, 22.0)))
    assert missing.lost == [] and missing.invented == []


def test_one_word_spelt_as_two_is_carried_not_invented_twice_or_substituted() -> None:
    # tiny.en offline wrote "thyself"; a stream wrote "thy self" (and the other way round).
    apart = scoring.score(
        ref(("thyself", 26.9), ("thy", 27.2), ("foe", 27.8)),
        got(("thy", 26.6, 28.9), ("self", 27.0, 31.0), ("thy", 27.4, 31.0), ("foe", 27.9, 31.0)),
    )
    assert apart.twice == [] and apart.invented == [] and apart.lost == []
    assert apart.substituted == 0 and len(apart.lags) == 3
    joined = scoring.score(
        ref(("thy", 26.6), ("self", 27.0), ("foe", 27.8)),
        got(("thyself", 27.0, 29.0), ("foe", 27.9, 31.0)),
    )
    assert joined.lost == [] and joined.invented == [] and joined.substituted == 0
    # Two different words next to each other are not a split.
    different = scoring.score(
        ref(("thyself", 26.9), ("foe", 27.8)),
        got(("the", 26.6, 28.9), ("self", 27.0, 31.0), ("foe", 27.9, 31.0)),
    )
    assert [t.text for t in different.invented] == ["the"] and different.substituted == 1
