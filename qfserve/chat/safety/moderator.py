"""The moderator: word lists and personal-data patterns over folded text, and the verdict on the
user messages of a request (API.md section 4).

Pure: no I/O. A `Moderator` is immutable and shared by every request; `ModeratorSource` swaps in a
new one when the list files change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qfserve.chat.conversation import Message
from qfserve.chat.safety.automaton import Term
from qfserve.chat.safety.lists import WordList, category_name
from qfserve.chat.safety.normalise import (
    NO_CLASS,
    Folded,
    boundary_after,
    boundary_before,
    char_class,
    fold,
    fold_view,
)
from qfserve.chat.safety.patterns import PERSONAL_DATA_PATTERNS, Pattern, PatternSet

# The fixed answer to a flagged question (the page gives none; this is ERNIE Bot's wording).
REFUSAL = "这个问题我暂时无法回答，让我们换个话题再聊聊吧。"


@dataclass(frozen=True, slots=True)
class Hit:
    """A flag and its category, and on purpose nothing else: no term, no span, no text. Hits are
    logged, counted in metrics and kept in the usage ledger, where flagged text must not leak."""

    category: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """A flagged request: `ban_round` is -1 for the current question, else the flagged round."""

    hit: Hit
    ban_round: int


@dataclass(frozen=True, slots=True)
class Scan:
    """One look at a stream's buffer, in folded indices: the earliest hit from `first` on, if any,
    and where the text still undecided begins (the buffer's length when nothing is)."""

    hit: Hit | None
    hit_start: int
    hold_from: int


class Moderator:
    def __init__(
        self, words: WordList, patterns: Sequence[Pattern] = PERSONAL_DATA_PATTERNS
    ) -> None:
        self._words = words
        self._automaton = words.automaton
        self._patterns = PatternSet(patterns)

    @classmethod
    def default(cls, *, disabled: Iterable[str] = ()) -> Moderator:
        return cls.from_files((), disabled=disabled)

    @classmethod
    def from_files(cls, paths: Sequence[Path], *, disabled: Iterable[str] = ()) -> Moderator:
        """The shipped lists plus the files', and the patterns, less the `disabled` categories.

        Raises OSError or UnicodeDecodeError when a file cannot be read.
        """
        skip = frozenset(category_name(c) for c in disabled)
        patterns = [p for p in PERSONAL_DATA_PATTERNS if p.category not in skip]
        return cls(WordList.from_files(paths, disabled=skip), patterns)

    @property
    def words(self) -> WordList:
        return self._words

    @property
    def max_hold(self) -> int:
        """The most folded characters a stream is held back: the longest term or pattern."""
        return max(self._words.max_length, self._patterns.max_length)

    def check(self, text: str) -> Hit | None:
        """The first hit in a whole text, or None. Linear in the text, whatever the list's size."""
        key = fold(text)
        view: Folded | None = None
        for last, term in self._automaton.iter(key):
            if term.needs_start or term.needs_end:
                # Boundaries need the map to the raw text; only candidates of Latin-script terms
                # pay for it, and they are rare.
                view = view or fold_view(text)
                if not _whole_words(view, last + 1 - term.length, term, final=True):
                    continue
            return Hit(term.category)
        if self._patterns.has_candidates(key):
            view = view or fold_view(text)
            for _, category in self._patterns.hits(view, first=0, final=True):
                return Hit(category)
        return None

    def scan(self, view: Folded, *, first: int, final: bool) -> Scan:
        """Look at a stream's buffer from folded index `first` (what came before it was sent).

        While the stream is open (`final` false), a match whose end is not decided yet (a word
        that may go on) is no hit yet, and the text that could still become one is held:
        from the earliest suffix that is the start of a term, or the tail of a digit run.
        """
        text = view.text
        found: tuple[int, str] | None = None
        for last, term in self._automaton.iter(text):
            start = last + 1 - term.length
            if start < first or (found is not None and start >= found[0]):
                continue
            if _whole_words(view, start, term, final=final):
                found = (start, term.category)
        for start, category in self._patterns.hits(view, first=first, final=final):
            if found is None or start < found[0]:
                found = (start, category)
            break  # they come in order of their starts
        if final:
            hold = len(text)
        else:
            hold = min(self._term_hold(view, first), self._patterns.hold_from(view, first=first))
        if found is None:
            return Scan(None, len(text), hold)
        return Scan(Hit(found[1]), found[0], hold)

    def _term_hold(self, view: Folded, first: int) -> int:
        """The earliest folded index from which the text is the start of some term."""
        text, size = view.text, len(view.text)
        # A longer suffix than the longest term cannot be the start of one: at most
        # `max_length` checks, each a walk down the trie, whatever the list's size.
        for p in range(max(first, size - self._words.max_length), size):
            if not self._automaton.is_prefix(text[p:]):
                continue
            # Terms beginning with a letter or digit begin words: no need to hold mid-word.
            if char_class(text[p]) == NO_CLASS or boundary_before(view, p):
                return p
        return size


def _whole_words(view: Folded, start: int, term: Term, *, final: bool) -> bool:
    """Whether a match of `term` at `start` begins and ends at word boundaries, as it must."""
    if term.needs_start and not boundary_before(view, start):
        return False
    return not term.needs_end or boundary_after(view, start + term.length, final=final) is True


def check_messages(messages: Sequence[Message], moderator: Moderator) -> Verdict | None:
    """Check every user message of a request, before generation; None when none is flagged.

    Pass the messages as the client sent them, before old rounds are forgotten, so that round
    numbers are the client's. The current question (the last user message) flagged gives
    `ban_round` -1, whatever else is flagged. Otherwise, of several flagged rounds, the latest is
    reported: a client that drops the rounds up to `ban_round` then drops every flagged one.
    """
    questions = [m.content for m in messages if m.role == "user"]
    if not questions:
        return None
    if (hit := moderator.check(questions[-1])) is not None:
        return Verdict(hit, -1)
    # Latest first, so the check stops at the round to report.
    for round_number in range(len(questions) - 1, 0, -1):
        if (hit := moderator.check(questions[round_number - 1])) is not None:
            return Verdict(hit, round_number)
    return None
