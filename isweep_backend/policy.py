"""The commit rule of one session: which recognised words are final.

LocalAgreement-2 (Macháček et al., whisper_streaming): a word is committed once two
consecutive passes over the growing buffer agree on it, and then never revised. Three more
rules bound latency: a word Whisper is sure of (its probability) with enough audio heard after
it is committed at first sight; at the end of speech (VAD) the rest of the hypothesis is
committed; and a word older than a deadline on the audio timeline is committed unconfirmed.
Committed words come out in time order, each once; the buffer behind them can then be trimmed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .timeline import SAMPLE_RATE, PassResult, Word

if TYPE_CHECKING:
    from .settings import Settings

# The most the deadline is brought forward when passes come more than a second apart.
MAX_DEADLINE_ADVANCE_SAMPLES = SAMPLE_RATE
# Passes further apart than this make the stability rule take a word at this probability.
SLOW_PASS_INTERVAL_SAMPLES = SAMPLE_RATE * 3 // 2
SLOW_PASS_STABLE_PROBABILITY = 0.5
# A new word starting this much before the last committed end is the same word heard again.
REHEARD_TOLERANCE_SAMPLES = SAMPLE_RATE // 10
# How far Whisper's times for a word it hears again may stray from the committed word's times.
# A word of the same spelling that starts later than this after the committed one ended is a
# new utterance of it ("No. No!"), never the old one heard again.
REHEARD_JITTER_SAMPLES = SAMPLE_RATE // 5
# Committed words re-heard by a new pass are matched this many at most, and only where the
# re-heard word ends this close to where the committed one ended.
MAX_OVERLAP_WORDS = 5
# Two passes agree on a word they heard at the same time; a dispute of up to this many words
# between agreed ones is settled by the newer pass.
MAX_DISPUTED_WORDS = 1
OVERLAP_WINDOW_SAMPLES = SAMPLE_RATE
# At a speech onset, an agreed first word Whisper doubts (down to this probability) is taken
# when this many agreed words after it were heard with at least this probability.
ONSET_FIRST_WORD_FLOOR = 0.2
ONSET_SURE_WORDS = 3
ONSET_SURE_PROBABILITY = 0.85
# At the end of speech, trailing words Whisper heard with less probability than this are
# dropped rather than committed unconfirmed (see apply).
END_OF_SPEECH_FLOOR = 0.3
PROMPT_CHARS = 200
# Audio kept before the newest sample when the buffer holds no speech at all.
SILENCE_KEEP_SAMPLES = SAMPLE_RATE


@dataclass
class CommitDecision:
    words: list[Word] = field(default_factory=list)
    trim_to: int | None = None
    by_agreement: int = 0
    by_stability: int = 0
    by_end_of_speech: int = 0
    by_deadline: int = 0
    # Trailing words at the end of speech dropped as Whisper's guesses at silence.
    dropped_at_end_of_speech: int = 0


class LocalAgreementPolicy:
    def __init__(
        self,
        deadline_seconds: float,
        trim_seconds: float,
        end_of_speech_seconds: float,
        stable_after_seconds: float = 0.0,
        stable_probability: float = 1.0,
        agreement_probability: float = 0.0,
    ) -> None:
        self.deadline_samples = round(deadline_seconds * SAMPLE_RATE)
        # 0 s turns the first-sight rule off.
        self.stable_after_samples = round(stable_after_seconds * SAMPLE_RATE)
        self.stable_probability = stable_probability
        self.agreement_probability = agreement_probability
        self.trim_samples = round(trim_seconds * SAMPLE_RATE)
        self.end_of_speech_samples = round(end_of_speech_seconds * SAMPLE_RATE)
        self.committed_end = 0
        self._committed_tail: list[Word] = []
        self._recent_committed: list[Word] = []  # enough for the prompt
        # Whether the buffer was last cut after silence (a pass VAD skipped): the speech now in
        # it is a new start, and gets no prompt until the buffer is next cut behind its words.
        self._after_silence = False
        self._hypothesis: list[Word] = []
        self._last_audio_end: int | None = None  # where the previous pass's audio ended

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalAgreementPolicy:
        return cls(
            settings.commit_deadline_seconds,
            settings.trim_seconds,
            settings.end_of_speech_seconds,
            settings.stable_after_seconds,
            settings.stable_probability,
            settings.agreement_probability,
        )

    @property
    def hypothesis(self) -> list[Word]:
        return list(self._hypothesis)

    def prompt(self, buffer_start: int) -> str:
        """Committed text from before the buffer, as the next pass's prompt.

        Only text the pass will not hear: given words that are still in the buffer, Whisper
        takes them as already said, skips them, and misplaces the rest of the timings. And no
        prompt over speech that follows a silence: there the previous sentence's text made
        Whisper continue it with words that were never said ("Go forward 10 meters.
        Thanks."). After a short pause inside continuous speech the prompt stays: without
        it, a sentence whose buffer starts mid-flow came out garbled ("Most of the remaining
        words, Smallly out problems").
        """
        if self._after_silence:
            return ""
        before = [w.text for w in self._recent_committed if w.end <= buffer_start]
        return "".join(before)[-PROMPT_CHARS:].lstrip()

    def apply(self, result: PassResult, buffer_start: int) -> CommitDecision:
        """Take one pass's words and decide which are final.

        Args:
            result: what the pass heard, on the session timeline.
            buffer_start: the session sample where the pass's audio began.

        Returns:
            The newly committed words (in time order, none twice, none before an earlier
            commit), how many each rule committed, and where the buffer may be trimmed.
        """
        decision = CommitDecision()
        interval = self._pass_interval(result)
        deadline_advance = min(max(interval - SAMPLE_RATE, 0), MAX_DEADLINE_ADVANCE_SAMPLES)
        stable_probability = self.stable_probability
        if interval > SLOW_PASS_INTERVAL_SAMPLES:
            stable_probability = min(stable_probability, SLOW_PASS_STABLE_PROBABILITY)
        if result.skipped_by_vad:
            self._hypothesis = []
            decision.trim_to = max(buffer_start, result.audio_end - SILENCE_KEEP_SAMPLES)
            self._after_silence = True
            return decision
        new = self._drop_already_committed(result.words)
        agreed = _agreed_length(self._hypothesis, new)
        if self.at_onset:
            agreed = self._onset_agreed_length(new, agreed)
        self._commit(new[:agreed], decision)
        decision.by_agreement = agreed
        rest = new[agreed:]
        stable = self._stable_prefix_length(rest, result.audio_end, stable_probability)
        if stable:
            decision.by_stability = stable
            self._commit(rest[:stable], decision)
            rest = rest[stable:]

        speech_end = result.speech_end
        speech_over = (
            speech_end is not None and result.audio_end - speech_end >= self.end_of_speech_samples
        )
        if speech_over and rest:
            assert speech_end is not None
            # Only the words of the speech that ended; any word after it is new speech that
            # VAD has not confirmed yet, and waits for agreement like any other.
            finished = 0
            while finished < len(rest) and rest[finished].start < speech_end:
                finished += 1
            # A word heard once, at the edge of the silence, that Whisper itself doubts is
            # most often its habit of ending on "Thank you." or "So.": "thank" at 0.16 after
            # a speech's last words, where the real last words of the corpus's sentences that
            # reach this rule were heard at 0.43 and 0.46. Committed, it would be a word
            # nobody said; dropped, a real one would cost one word. Words that passes agree on
            # never get here.
            kept = finished
            while kept and rest[kept - 1].probability < END_OF_SPEECH_FLOOR:
                kept -= 1
            decision.by_end_of_speech = kept
            decision.dropped_at_end_of_speech = finished - kept
            self._commit(rest[:kept], decision)
            rest = rest[finished:]
        overdue_before = result.audio_end - self.deadline_samples + deadline_advance
        overdue = _prefix_length(rest, lambda w: w.end <= overdue_before)
        if overdue:
            decision.by_deadline = overdue
            self._commit(rest[:overdue], decision)
            rest = rest[overdue:]
        self._hypothesis = rest
        decision.trim_to = self._trim_point(result, buffer_start, speech_over)
        if decision.trim_to is not None and decision.trim_to > buffer_start:
            self._after_silence = False
        return decision

    def _pass_interval(self, result: PassResult) -> int:
        """Samples of new audio since the previous pass (0 at the first), and remember this
        pass's end for the next.

        The rules that weigh waiting for another pass were chosen at a pass a second (the
        recorder's 1 s timeslice). When passes come further apart (2 s blobs after a recorder
        restart, or a loaded service), a word that waits for the next pass waits the whole
        longer interval, so two rules lean towards committing now:
        - the deadline comes sooner by the interval's excess over a second, at most a second;
        - the stability rule takes a word Whisper is fairly sure of (`SLOW_PASS_STABLE_
          PROBABILITY`) when the interval is over 1.5 s. On the restart recording this took
          p50 / p95 from 1.66 / 3.61 to 1.53 / 3.48 s at the same WER (`policy_replay.py`);
          the same threshold at every pass cost a fifth more WER on the continuous reading.
        """
        previous, self._last_audio_end = self._last_audio_end, result.audio_end
        return 0 if previous is None else max(result.audio_end - previous, 0)

    @property
    def at_onset(self) -> bool:
        """Whether the speech in the buffer is a new start: the session's first words, or
        words after a silence VAD skipped."""
        return self._after_silence or not self._recent_committed

    def _onset_agreed_length(self, words: list[Word], agreed: int) -> int:
        """How many of the `agreed` leading words to commit at a speech onset.

        There the passes have no prompt and little audio, and two of them can agree on a
        guess ("How do you marry" for "Had he married"): a word Whisper itself doubts waits
        for more audio. Only a sentence's first word may be doubtful, heard without the
        sentence before it ("Unless" at 0.35), when the words after it are sure: a guess is
        doubtful throughout ("How" 0.21, "do" 0.56).
        """
        first = 0
        if (
            agreed > ONSET_SURE_WORDS
            and words[0].probability >= ONSET_FIRST_WORD_FLOOR
            and all(
                w.probability >= ONSET_SURE_PROBABILITY for w in words[1 : 1 + ONSET_SURE_WORDS]
            )
        ):
            first = 1
        return first + _prefix_length(
            words[first:agreed], lambda w: w.probability >= self.agreement_probability
        )

    def _stable_prefix_length(
        self, words: list[Word], audio_end: int, stable_probability: float
    ) -> int:
        """How many leading words need no second pass: Whisper's doubt sits in the last second
        of the buffer, where a word may be cut short or still forming. A word it heard with
        high probability and with `stable_after` of audio after it is already what the next
        pass would say, and waiting for that pass costs a blob interval of lag."""
        if self.stable_after_samples <= 0:
            return 0
        latest_end = audio_end - self.stable_after_samples
        return _prefix_length(
            words, lambda w: w.end <= latest_end and w.probability >= stable_probability
        )

    def _drop_already_committed(self, words: list[Word]) -> list[Word]:
        """The part of a new hypothesis after what is already committed.

        Whisper re-hears committed words at the start of the buffer with slightly different
        times, so they are found by content first: the longest run of the committed tail that
        the hypothesis repeats, word for word in spelling and in time, ending near the
        committed end. Only without such a run are words dropped by time alone. Spelling alone
        is not enough: after a pause has been trimmed away, "No!" after a committed "No." is
        new speech, and the second blocked word must still reach the client.
        """
        tail = self._committed_tail
        # A committed word pairs only with the word of its spelling that ends nearest it:
        # within Whisper's jitter, "no, no" said 0.05 s apart could pair either way, and a
        # run shifted by one word leaves the committed "no" to be committed again.
        nearest = [_nearest_same_word(words, c) for c in tail]
        best: tuple[int, int, int] | None = None  # (run length, -time distance, cut index)
        for cut in range(1, len(words) + 1):
            distance = abs(words[cut - 1].end - self.committed_end)
            if distance > OVERLAP_WINDOW_SAMPLES:
                continue
            run = 0
            while (
                run < min(MAX_OVERLAP_WORDS, cut, len(tail))
                and nearest[len(tail) - 1 - run] == cut - 1 - run
                and _same_utterance(words[cut - 1 - run], tail[-1 - run])
            ):
                run += 1
            if run and (best is None or (run, -distance) > best[:2]):
                best = (run, -distance, cut)
        if best is None:
            return [w for w in words if w.start >= self.committed_end - REHEARD_TOLERANCE_SAMPLES]
        rest = words[best[2] :]
        # A word that begins inside a committed word of its spelling is that word again (one
        # an earlier pass cut at the buffer's end, heard whole now), never a new utterance.
        again = _prefix_length(
            rest, lambda w: any(w.key == c.key and w.start < c.end for c in tail)
        )
        return rest[again:]

    def _commit(self, words: list[Word], decision: CommitDecision) -> None:
        for word in words:
            start = max(word.start, self.committed_end)
            final = Word(word.text, start, max(word.end, start), word.probability)
            decision.words.append(final)
            self.committed_end = final.end
            self._recent_committed.append(final)
        self._committed_tail = self._recent_committed[-MAX_OVERLAP_WORDS:]
        # ~200 prompt characters are at most ~200 words; keep a margin, bounded.
        del self._recent_committed[:-PROMPT_CHARS]

    def _trim_point(self, result: PassResult, buffer_start: int, speech_over: bool) -> int | None:
        """Where the buffer may be cut: only behind committed words, and in a pause.

        Cutting inside speech makes the next pass hear half a word ("ase" for "please"), so
        the cut goes in the middle of the latest VAD silence that lies wholly behind the
        committed words. Only a buffer that has no such pause and has grown past
        trim + deadline is cut at a word edge, to bound its size.
        """
        if speech_over and not self._hypothesis:
            assert result.speech_end is not None
            # Everything heard is committed and the speaker paused: cut in the silence, but
            # before recent speech that yielded no word. Whisper often hears a word said twice
            # ("No. No!") as once; alone in the next pass, the second one is heard. Speech
            # that stays wordless past the deadline is noise and goes.
            unheard = [
                r
                for r in result.speech
                if r.start >= self.committed_end
                and result.audio_end - r.end < self.deadline_samples
                and buffer_start < r.start
            ]
            if unheard:
                previous = [r.end for r in result.speech if r.end <= unheard[0].start]
                return (max([*previous, buffer_start]) + unheard[0].start) // 2
            return max(buffer_start, min(result.speech_end, result.audio_end))
        length = result.audio_end - buffer_start
        if length <= self.trim_samples:
            return None
        limit = self.committed_end
        if self._hypothesis:
            limit = min(limit, self._hypothesis[0].start)
        pauses = [
            (before.end + after.start) // 2
            for before, after in zip(result.speech, result.speech[1:], strict=False)
            if after.start <= limit and after.start > before.end
        ]
        if pauses and pauses[-1] > buffer_start:
            return pauses[-1]
        if length > self.trim_samples + self.deadline_samples and limit > buffer_start:
            return limit
        return None


def _same_utterance(heard: Word, committed: Word) -> bool:
    """Whether `heard` is the committed word heard again: same normalised spelling, and the
    two overlap in time give or take Whisper's timing jitter."""
    return (
        heard.key == committed.key
        and heard.start < committed.end + REHEARD_JITTER_SAMPLES
        and heard.end > committed.start - REHEARD_JITTER_SAMPLES
    )


def _nearest_same_word(words: list[Word], committed: Word) -> int | None:
    """The index of the word of `committed`'s spelling that ends nearest it, if any."""
    same = [i for i, w in enumerate(words) if w.key == committed.key]
    return min(same, key=lambda i: abs(words[i].end - committed.end), default=None)


def _prefix_length(words: list[Word], holds: Callable[[Word], bool]) -> int:
    """How many leading words `holds` is true of."""
    n = 0
    while n < len(words) and holds(words[n]):
        n += 1
    return n


def _agreed_length(previous: list[Word], current: list[Word]) -> int:
    """How many leading words of `current` the previous pass confirms.

    The words the two passes share, in order, by spelling (difflib's alignment) and time
    (`_same_utterance`), confirm everything in `current` up to the last of them: a word
    between two confirmed ones that the passes heard differently ("feet" then "feeds") is
    taken as the current pass heard it, with more audio after it. Only short disputes are
    bridged; a longer one means the passes disagree about the speech, and the agreement stops
    before it.
    """
    matcher = difflib.SequenceMatcher(
        None, [w.key for w in previous], [w.key for w in current], autojunk=False
    )
    agreed = 0
    last_previous = -1
    for a, b, size in matcher.get_matching_blocks():
        for i, j in zip(range(a, a + size), range(b, b + size), strict=True):
            if not _same_utterance(current[j], previous[i]):
                return agreed
            if max(i - last_previous, j - agreed) - 1 > MAX_DISPUTED_WORDS:
                return agreed
            agreed, last_previous = j + 1, i
    return agreed
