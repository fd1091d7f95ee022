"""Patterns of personal data: mainland ID card, mobile and bank card numbers.

A pattern describes a whole number, matched against the folded digits. What lay between two
digits in the raw text decides whether they can belong to one number:
- nothing (or a zero-width character): they are joined;
- spaces, dashes, "+" or brackets: a group boundary that a number may start or end at, or span
  ("138 1234 5678", "+86 (138) 1234-5678", but also "13812345678 2号");
- any other separator (comma, colon, newline, Chinese punctuation): they are apart. A list such as
  "1, 4, 9, 16, 25, 36, 49, 64, 81" never reads as a phone number;
- a decimal point alone: they are apart, and neither side is a whole number: the fraction of
  "0.55206000085785778" is no bank card, and "13812345678.5" no phone number.
A number starts and ends next to a separator or a Chinese character, never inside a word of
letters and digits (a hash, a version string).
A candidate is any stretch from a group start to a group end; a pattern must match it whole. Each
group start has at most `max_length` candidate ends: the scan stays linear.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from qfserve.chat.safety.normalise import NO_CLASS, Folded, char_class, is_separator

PERSONAL_DATA = "personal_data"

# A folded run of digits, with the final "x" an ID card's check character may be.
_RUN = re.compile(r"[0-9]+x?")
_TRAILING_RUN = re.compile(r"[0-9]+x?\Z")
# Besides spaces (Zs) and dashes (Pd): what phone numbers are written with.
_GROUPING = frozenset("\t+()（）")
_DECIMAL_POINTS = frozenset(".．")
_JOIN, _GROUP, _SPLIT, _FRACTION = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Pattern:
    category: str
    regex: re.Pattern[str]  # matched against the whole candidate
    min_length: int
    max_length: int
    validate: Callable[[str], bool] | None = None

    def matches(self, text: str, start: int, end: int) -> bool:
        if not self.min_length <= end - start <= self.max_length:
            return False
        if self.regex.fullmatch(text, start, end) is None:
            return False
        return self.validate is None or self.validate(text[start:end])


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECKS = "10x98765432"


def id_card_checksum_ok(number: str) -> bool:
    """GB 11643's ISO 7064 MOD 11-2 check character: rules out most stray 18-digit runs."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return number[17] == _ID_CHECKS[total % 11]


def luhn_ok(number: str) -> bool:
    total = 0
    for index, digit in enumerate(reversed(number)):
        value = int(digit)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


PERSONAL_DATA_PATTERNS: tuple[Pattern, ...] = (
    # Mainland mobile numbers, with or without the country code.
    Pattern(PERSONAL_DATA, re.compile(r"(?:86)?1[3-9][0-9]{9}"), 11, 13),
    # Resident ID: region (first digit 1-8), birth date, sequence, check character.
    Pattern(
        PERSONAL_DATA,
        re.compile(
            r"[1-8][0-9]{5}"  # region
            r"(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"  # birth date
            r"[0-9]{3}[0-9x]"  # sequence and check character
        ),
        18,
        18,
        id_card_checksum_ok,
    ),
    # Bank cards: UnionPay, Visa, Mastercard prefixes, with a valid Luhn digit.
    Pattern(PERSONAL_DATA, re.compile(r"(?:62|4|5[1-5])[0-9]{14,17}"), 16, 19, luhn_ok),
)


class PatternSet:
    def __init__(self, patterns: Sequence[Pattern]) -> None:
        self.patterns = tuple(patterns)
        # Read on every delta of a stream: computed once.
        self.min_length = min((p.min_length for p in self.patterns), default=0)
        self.max_length = max((p.max_length for p in self.patterns), default=0)

    def has_candidates(self, text: str) -> bool:
        """A cheap first test on folded text: is there a digit run long enough for a pattern?"""
        if not self.patterns:
            return False
        return any(len(m.group()) >= self.min_length for m in _RUN.finditer(text))

    def hits(self, f: Folded, *, first: int, final: bool) -> Iterator[tuple[int, str]]:
        """(start, category) of each number matching a pattern and starting at or after `first`,
        in order of their starts. Numbers whose end a stream has not decided yet are left out."""
        if not self.patterns:
            return
        shortest, longest = self.min_length, self.max_length
        text = f.text
        for run in _RUN.finditer(text, first):
            start, end = run.span()
            if end - start < shortest:
                continue
            # Group starts and ends, per stretch between two splits.
            segments: list[tuple[list[int], list[int]]] = []
            starts: list[int] = []
            ends: list[int] = []
            if _apart(f, start):
                starts.append(start)
            for k in range(start + 1, end):
                relation = _relation(f, k)
                if relation == _SPLIT:
                    segments.append((starts, [*ends, k]))
                    starts, ends = [k], []
                elif relation == _FRACTION:
                    segments.append((starts, ends))
                    starts, ends = [], []
                elif relation == _GROUP:
                    starts.append(k)
                    ends.append(k)
            if end < len(text):
                closed: bool | None = _apart(f, end)
            elif final:
                closed = True
            else:
                # A decimal point at the end of the buffer may be a full stop or a fraction's.
                tail = _gap(f.raw, f.positions[end - 1] + 1, len(f.raw))
                closed = tail in (_GROUP, _SPLIT) or None
            segments.append((starts, [*ends, end] if closed else ends))
            for group_starts, group_ends in segments:
                for s in group_starts:
                    window = group_ends[bisect_left(group_ends, s + shortest) :]
                    for e in window[: bisect_right(window, s + longest)]:
                        category = self._match(text, s, e)
                        if category is not None:
                            yield s, category
                            break

    def hold_from(self, f: Folded, *, first: int) -> int:
        """Where to start holding a stream back: the tail of a digit run at the end could still
        grow into a number, unless a split after it has closed it."""
        size = len(f.text)
        if not self.patterns:
            return size
        tail = _TRAILING_RUN.search(f.text, first)
        if tail is None or _gap(f.raw, f.positions[-1] + 1, len(f.raw)) == _SPLIT:
            return size
        return max(tail.start(), size - self.max_length)

    def _match(self, text: str, start: int, end: int) -> str | None:
        for pattern in self.patterns:
            if pattern.matches(text, start, end):
                return pattern.category
        return None


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


def _gap(raw: str, start: int, end: int) -> int:
    """How the raw characters between two folded digits relate them (see the module's doc)."""
    if raw[start:end] in _DECIMAL_POINTS:
        return _FRACTION
    relation = _JOIN
    for c in raw[start:end]:
        if not is_separator(c):
            continue
        if c in _GROUPING or unicodedata.category(c) in ("Zs", "Pd"):
            relation = _GROUP
        else:
            return _SPLIT
    return relation


def _apart(f: Folded, k: int) -> bool:
    """Whether a number may start at folded index `k`, or end before it, at a run's edge.

    Next to a Chinese character, yes ("手机13812345678"); next to a digit or a letter, only across a
    separator: digits inside a word ("4266599d12bfcfb8152133...", a hash) are no number.
    """
    if k == 0:
        return True
    if char_class(f.text[k - 1]) == NO_CLASS or char_class(f.text[k]) == NO_CLASS:
        return True
    return _relation(f, k) in (_GROUP, _SPLIT)


def _relation(f: Folded, k: int) -> int:
    """How folded characters `k - 1` and `k` of one digit run relate."""
    return _gap(f.raw, f.positions[k - 1] + 1, f.positions[k])
