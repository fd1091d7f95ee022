"""Folding text into the form that word lists are matched against, with a map back to the raw text.

Each raw character is folded on its own: compatibility decomposition (NFKD: full-width to
half-width, ligatures and circled digits to plain ones), combining marks dropped (accents, and the
marks stacked on letters to dodge a list), case folded, and spaces, punctuation, symbols and
control characters dropped. So "赌 博", "g.a.m.b.l.i.n.g" and "ｇａｍｂｌｅ" fold to "赌博",
"gambling" and "gamble". Folding character by character (not NFKC over the whole string) keeps
it context-free: a stream can fold each delta as it arrives and get what folding the whole would.

Dropping every space makes words of Latin script run together ("it's excellent" holds "sex"), so
matches of such terms are checked against word boundaries of the raw text: `boundary_before`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# Unicode general categories, by first letter: letters and numbers are kept, the rest dropped.
_DROPPED = frozenset("MPSZC")
# What separates words in the raw text: spaces, punctuation, symbols, control characters (tabs,
# newlines). Not combining marks nor format characters (zero-width space and joiners): those are
# slipped inside a word to dodge a list, and do not end it.
_SEPARATING = frozenset("ZPS")
# A cache of folded characters; past this size (an attacker sending every code point) it stops
# growing and folds the rare rest each time.
_TABLE_LIMIT = 70_000

NO_CLASS, DIGIT, LETTER = 0, 1, 2


def fold_char(ch: str) -> str:
    """One raw character's folded form; "" when it is dropped."""
    kept = [
        c.casefold()
        for c in unicodedata.normalize("NFKD", ch)
        if unicodedata.category(c)[0] not in _DROPPED
    ]
    return "".join(kept)


class _FoldTable(dict[int, str | None]):
    """`str.translate` table computed on demand: None deletes the character."""

    def __missing__(self, code: int) -> str | None:
        folded = fold_char(chr(code)) or None
        if len(self) < _TABLE_LIMIT:
            self[code] = folded
        return folded


_TABLE = _FoldTable()


def fold(raw: str) -> str:
    """The folded text alone: the fast path for a whole message, about 70 ns a character."""
    return raw.translate(_TABLE)


@dataclass(slots=True)
class Folded:
    """Raw text, its folded form, and for each folded character the index of its raw character.

    `positions` is non-decreasing; a raw character that folds to several ("ﬁ" to "fi") gives
    them all its index, and a dropped one gives none.
    """

    raw: str
    text: str
    positions: list[int]


def fold_mapped(raw: str, offset: int = 0) -> tuple[str, list[int]]:
    """The folded text and its positions in `raw`, shifted by `offset` (for appending)."""
    table = _TABLE
    parts: list[str] = []
    positions: list[int] = []
    for index, ch in enumerate(raw, offset):
        folded = table[ord(ch)]
        if folded:
            parts.append(folded)
            if len(folded) == 1:
                positions.append(index)
            else:
                positions.extend([index] * len(folded))
    return "".join(parts), positions


def fold_view(raw: str) -> Folded:
    text, positions = fold_mapped(raw)
    return Folded(raw, text, positions)


def char_class(c: str) -> int:
    """Whether a folded character belongs to a script written with spaces between words.

    Digits and letters below U+2E80 (Latin, Greek, Cyrillic, ...) do: a term in them must match
    whole words. CJK and the rest do not: a Chinese term matches anywhere.
    """
    if "0" <= c <= "9":
        return DIGIT
    if c < "\u2e80":
        return LETTER
    return NO_CLASS


def is_separator(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category[0] in _SEPARATING or category == "Cc"


def _separated(raw: str, start: int, end: int) -> bool:
    return any(is_separator(raw[i]) for i in range(start, end))


def boundary_before(f: Folded, k: int) -> bool:
    """Whether a word boundary lies just before folded character `k`.

    There is one at the start, between characters of different classes (a letter and a digit, a
    letter and a Chinese character), and where the raw text has a separator between the two.
    """
    if k == 0:
        return True
    before = char_class(f.text[k - 1])
    if before == NO_CLASS or before != char_class(f.text[k]):
        return True
    return _separated(f.raw, f.positions[k - 1] + 1, f.positions[k])


def boundary_after(f: Folded, end: int, *, final: bool) -> bool | None:
    """Whether a word boundary lies just after folded character `end - 1`.

    None while a stream is open and nothing after it decides: the next delta may go on with the
    same word.
    """
    if end < len(f.text):
        return boundary_before(f, end)
    if final:
        return True
    tail = f.positions[end - 1] + 1 if end else 0
    return True if _separated(f.raw, tail, len(f.raw)) else None
