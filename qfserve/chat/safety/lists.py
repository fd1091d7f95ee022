"""Word lists: reading list files, the shipped default lists, and the automaton built from them.

The file format (the shipped lists in `qfserve/chat/safety_lists/` and the extra lists named in the
settings alike): UTF-8, one term per line; blank lines and lines starting with `#` are skipped; a
line `category: NAME` sets the category of the terms after it, which is otherwise the file's name
without its suffix (`gambling.txt` lists gambling). Categories label metrics, so they are reduced
to lower-case letters, digits and underscores.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path

from qfserve.chat.safety.automaton import Automaton, Term
from qfserve.chat.safety.normalise import NO_CLASS, char_class, fold

DEFAULT_LISTS_PACKAGE = "qfserve.chat.safety_lists"
_CATEGORY_LINE = "category:"
_NOT_IN_NAME = re.compile(r"[^a-z0-9_]+")

# (category, term): a term as written in its list, before folding.
Entry = tuple[str, str]


def category_name(text: str) -> str:
    name = _NOT_IN_NAME.sub("_", text.strip().lower()).strip("_")
    return name or "other"


def parse_list(text: str, *, category: str) -> list[Entry]:
    """The entries of one list file's text; `category` until a `category:` line says otherwise."""
    current = category_name(category)
    entries: list[Entry] = []
    for line in text.splitlines():
        term = line.strip()
        if not term or term.startswith("#"):
            continue
        if term.startswith(_CATEGORY_LINE):
            current = category_name(term[len(_CATEGORY_LINE) :])
            continue
        entries.append((current, term))
    return entries


def read_list(path: Path) -> list[Entry]:
    """An extra list file's entries. Raises OSError or UnicodeDecodeError as reading does."""
    # utf-8-sig: lists saved by Windows editors start with a byte-order mark.
    return parse_list(path.read_text(encoding="utf-8-sig"), category=path.stem)


@cache
def default_entries() -> tuple[Entry, ...]:
    """The shipped lists, read once: they change only with a new release."""
    folder = resources.files(DEFAULT_LISTS_PACKAGE)
    entries: list[Entry] = []
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if item.is_file() and item.name.endswith(".txt"):
            stem = item.name.removesuffix(".txt")
            entries.extend(parse_list(item.read_text(encoding="utf-8"), category=stem))
    if not entries:
        # A wheel built without the package data: refuse rather than serve with no list.
        raise RuntimeError(f"no default safety lists found in {DEFAULT_LISTS_PACKAGE}")
    return tuple(entries)


class WordList:
    """Terms by category, folded and compiled into one Aho-Corasick automaton.

    Immutable once built: a reload builds a new one beside it (`ModeratorSource`), so checks in
    flight keep the list they started with.
    """

    def __init__(self, entries: Iterable[Entry], *, disabled: Iterable[str] = ()) -> None:
        skip = {category_name(c) for c in disabled}
        self._automaton = Automaton()
        self._categories: set[str] = set()
        self.max_length = 0
        for category, term in entries:
            key = fold(term)
            # A term made only of punctuation folds to nothing: it could never match.
            if not key or category in skip:
                continue
            listed = Term(
                length=len(key),
                category=category,
                needs_start=char_class(key[0]) != NO_CLASS,
                needs_end=char_class(key[-1]) != NO_CLASS,
            )
            if self._automaton.add(key, listed):
                self._categories.add(category)
                self.max_length = max(self.max_length, len(key))
        self._automaton.freeze()

    @classmethod
    def default(cls, *, disabled: Iterable[str] = ()) -> WordList:
        return cls(default_entries(), disabled=disabled)

    @classmethod
    def from_files(cls, paths: Sequence[Path], *, disabled: Iterable[str] = ()) -> WordList:
        """The default lists plus the files' terms: added to the default, never replacing it."""
        entries = list(default_entries())
        for path in paths:
            entries.extend(read_list(path))
        return cls(entries, disabled=disabled)

    def __len__(self) -> int:
        return len(self._automaton)

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(self._categories)

    @property
    def automaton(self) -> Automaton:
        return self._automaton
