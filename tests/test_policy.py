"""The commit rule, on hand-made hypotheses (times in samples at 16 kHz)."""

from __future__ import annotations

from isweep_backend.engine import PassResult, SpeechRegion, Word, cut_repetition_loop
from isweep_backend.policy import LocalAgreementPolicy

S = 16000


def words(*spec: tuple[str, float, float]) -> list[Word]:
    return [Word(" " + t, round(a * S), round(b * S), 0.9) for t, a, b in spec]


def result(ws: list[Word], audio_end: float, speech_end: float | None = None) -> PassResult:
    end = speech_end if speech_end is not None else audio_end
    return PassResult(
        words=ws, speech=[SpeechRegion(0, round(end * S))], audio_end=round(audio_end * S)
    )


def policy() -> LocalAgreementPolicy:
    return LocalAgreementPolicy(deadline_seconds=4.0, trim_seconds=8.0, end_of_speech_seconds=0.6)


def test_words_commit_only_when_two_passes_agree() -> None:
    p = policy()
    first = p.apply(result(words(("hello", 0.1, 0.4), ("wor", 0.5, 0.9)), 1.0), 0)
    assert first.words == []
    second = p.apply(
        result(words(("hello", 0.1, 0.4), ("world", 0.5, 1.0), ("how", 1.2, 1.5)), 2.0), 0
    )
    assert [w.text for w in second.words] == [" hello"]


def test_reheard_committed_words_are_not_emitted_twice() -> None:
    p = policy()
    p.apply(result(words(("one", 0.0, 0.3), ("two", 0.4, 0.7)), 1.0), 0)
    got = p.apply(result(words(("one", 0.0, 0.3), ("two", 0.4, 0.7), ("three", 0.8, 1.2)), 1.5), 0)
    assert [w.key for w in got.words] == ["one", "two"]
    # The next pass re-hears "two" with a shifted time: content matching still skips it.
    again = p.apply(
        result(
            words(("one", 0.0, 0.2), ("two", 0.3, 0.6), ("three", 0.8, 1.2), ("four", 1.3, 1.6)),
            2.0,
        ),
        0,
    )
    assert [w.key for w in again.words] == ["three"]


def test_end_of_speech_flushes_the_pending_hypothesis() -> None:
    p = policy()
    p.apply(result(words(("stop", 0.1, 0.5)), 0.6), 0)
    flushed = p.apply(result(words(("stop", 0.1, 0.5), ("now", 0.6, 0.9)), 2.0, speech_end=1.0), 0)
    assert [w.key for w in flushed.words] == ["stop", "now"]
    assert flushed.by_end_of_speech == 1
    assert flushed.trim_to == S  # cut in the silence after the speech


def test_deadline_commits_old_unconfirmed_words() -> None:
    p = policy()
    p.apply(result(words(("alpha", 0.1, 0.5)), 1.0), 0)
    late = p.apply(result(words(("alfa", 0.1, 0.5), ("beta", 4.5, 4.9)), 5.5), 0)
    assert [w.key for w in late.words] == ["alfa"]
    assert late.by_deadline == 1


def test_committed_times_never_go_backwards() -> None:
    p = policy()
    p.apply(result(words(("a", 0.0, 0.5), ("b", 0.4, 0.8)), 1.0), 0)
    got = p.apply(result(words(("a", 0.0, 0.5), ("b", 0.3, 0.8), ("c", 1.0, 1.2)), 2.0), 0)
    starts = [w.start for w in got.words]
    ends = [w.end for w in got.words]
    assert starts[1] >= ends[0] and all(e >= s for s, e in zip(starts, ends, strict=True))


def test_prompt_holds_only_text_from_before_the_buffer() -> None:
    p = policy()
    p.apply(result(words(("first", 0.0, 0.5), ("second", 1.0, 1.5)), 2.0), 0)
    p.apply(result(words(("first", 0.0, 0.5), ("second", 1.0, 1.5)), 2.5), 0)
    assert p.prompt(buffer_start=0) == ""
    assert p.prompt(buffer_start=S) == "first"


def test_repetition_loops_are_cut_after_their_first_occurrence() -> None:
    looped = words(
        *[
            (w, i * 0.2, i * 0.2 + 0.1)
            for i, w in enumerate(
                ["so", "we", "will", "go", "we", "will", "go", "we", "will", "go"]
            )
        ]
    )
    assert [w.key for w in cut_repetition_loop(looped)] == ["so", "we", "will", "go"]
    speech = words(("no", 0.0, 0.1), ("no", 0.2, 0.3), ("no", 0.4, 0.5))
    assert len(cut_repetition_loop(speech)) == 3
