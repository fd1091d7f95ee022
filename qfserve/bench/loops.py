"""Whether an answer loops: repeats itself instead of saying something new. Pure.

An answer loops when fewer than `MIN_DISTINCT` of the 4-grams in its second half are distinct.
The grams are over text units, since the bench sees answers as text from any server, not as a
model's tokens: a run of non-space characters outside Chinese, Japanese and Korean scripts is one
unit (an English word with its punctuation), and each CJK character is one unit of its own (those
scripts put no spaces between words, and a character is about a word's worth of meaning). Mixed
answers mix both. Answers with fewer than `MIN_GRAMS` 4-grams in their second half are too short
to loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

N = 4
MIN_DISTINCT = 0.30
MIN_GRAMS = 8

_CJK = (
    "\u3040-\u30ff"  # kana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # ideographs
    "\uac00-\ud7af"  # hangul
    "\u3000-\u303f\uff00-\uffef"  # CJK punctuation, full-width forms
)
_UNIT = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def units(text: str) -> list[str]:
    return _UNIT.findall(text)


def distinct_share(text: str) -> float | None:
    """Distinct 4-grams over all 4-grams in the second half of `text`'s units; None if too few."""
    found = units(text)
    half = found[len(found) // 2 :]
    grams = [tuple(half[i : i + N]) for i in range(len(half) - N + 1)]
    if len(grams) < MIN_GRAMS:
        return None
    return len(set(grams)) / len(grams)


def loops(text: str) -> bool:
    share = distinct_share(text)
    return share is not None and share < MIN_DISTINCT


def count(answers: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Answers and looping answers, in all and per language, from (language, text) pairs."""
    return tally((lang, loops(text)) for lang, text in answers)


def tally(verdicts: Iterable[tuple[str, bool]]) -> dict[str, Any]:
    """`count`'s result from (language, loops) pairs already judged."""
    total = looping = 0
    by_lang: dict[str, dict[str, int]] = {}
    for lang, looped in verdicts:
        total += 1
        looping += looped
        entry = by_lang.setdefault(lang or "?", {"answers": 0, "looping": 0})
        entry["answers"] += 1
        entry["looping"] += looped
    return {"answers": total, "looping": looping, "by_lang": dict(sorted(by_lang.items()))}


def share(counted: dict[str, Any] | None) -> float | None:
    if not counted or not counted.get("answers"):
        return None
    return float(counted["looping"]) / float(counted["answers"])


def merge(counts: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """Counts of several runs as one."""
    total: dict[str, Any] = {"answers": 0, "looping": 0, "by_lang": {}}
    for counted in counts:
        if not counted:
            continue
        total["answers"] += counted["answers"]
        total["looping"] += counted["looping"]
        for lang, entry in counted["by_lang"].items():
            mine = total["by_lang"].setdefault(lang, {"answers": 0, "looping": 0})
            mine["answers"] += entry["answers"]
            mine["looping"] += entry["looping"]
    total["by_lang"] = dict(sorted(total["by_lang"].items()))
    return total


def cell(counted: dict[str, Any] | None) -> str:
    """`looping / answers (share%)` for a table; `-` without answers."""
    value = share(counted)
    if counted is None or value is None:
        return "-"
    return f"{counted['looping']} / {counted['answers']} ({100 * value:.0f}%)"
