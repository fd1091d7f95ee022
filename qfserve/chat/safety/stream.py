"""Checking an answer as it is generated, and sending only text that cannot become a hit.

Pure and engine-independent, like `engines.stops.StopMatcher`: the caller feeds the answer's text
deltas and sends what comes back. The guard holds back only the tail that could still be the start
of a term or a number (at most `Moderator.max_hold` folded characters, and the raw characters they
came from, spaces and punctuation included), so text far from any term flows at once.

On a hit the guard stops: the text before the flagged term's first character is released (it was
checked and is clean), nothing from that character on ever is, and later calls return "".
"""

from __future__ import annotations

from bisect import bisect_left

from qfserve.chat.safety.moderator import Hit, Moderator
from qfserve.chat.safety.normalise import Folded, fold_mapped

# Raw characters kept before the held text, already sent, as context for the word boundary of
# the first held character: the last sent folded character and the separators after it. A longer
# run of dropped characters than this is cut; its last ones decide the boundary.
_CONTEXT_LIMIT = 16


class StreamGuard:
    """One answer's guard. Check `hit` after each `feed` and at `flush`: once set, stop generating.

    The buffer is folded as it grows, delta by delta (folding is per character), so the cost of
    each delta is its own length plus the held tail: linear in the answer.
    """

    def __init__(self, moderator: Moderator) -> None:
        self._moderator = moderator
        self._raw = ""  # context (sent) + held text
        self._text = ""  # self._raw folded
        self._positions: list[int] = []  # folded index -> index in self._raw
        self._sent_raw = 0  # length of the context in self._raw
        self._sent = 0  # folded characters of the context
        self.hit: Hit | None = None

    @property
    def held(self) -> str:
        """The raw text held back now (for tests and debugging; never to be sent)."""
        return self._raw[self._sent_raw :]

    def feed(self, delta: str) -> str:
        """Add a delta of the answer; return the text now safe to send ("" while holding back)."""
        if self.hit is not None:
            return ""
        text, positions = fold_mapped(delta, len(self._raw))
        self._raw += delta
        self._text += text
        self._positions += positions
        return self._advance(final=False)

    def flush(self) -> str:
        """The answer ended: release what was held, unless it completes a hit."""
        if self.hit is not None:
            return ""
        released = self._advance(final=True)
        self._raw, self._text, self._positions = "", "", []
        self._sent_raw = self._sent = 0
        return released

    def _advance(self, *, final: bool) -> str:
        view = Folded(self._raw, self._text, self._positions)
        scan = self._moderator.scan(view, first=self._sent, final=final)
        cut = scan.hold_from
        if scan.hit is not None:
            self.hit = scan.hit
            cut = min(cut, scan.hit_start)
        raw_cut = self._positions[cut] if cut < len(self._text) else len(self._raw)
        released = self._raw[self._sent_raw : raw_cut]
        if self.hit is not None:
            self._raw, self._text, self._positions = "", "", []
            self._sent_raw = self._sent = 0
        else:
            self._keep_from(cut, raw_cut)
        return released

    def _keep_from(self, cut: int, raw_cut: int) -> None:
        """Drop what was sent, but for the context of the next word boundary."""
        start = self._positions[cut - 1] if cut > 0 else 0
        start = max(start, raw_cut - _CONTEXT_LIMIT)
        # All the folded characters of the kept raw text ("ﬁ" gives two).
        first = bisect_left(self._positions, start, 0, cut)
        self._raw = self._raw[start:]
        self._text = self._text[first:]
        self._positions = [p - start for p in self._positions[first:]]
        self._sent_raw = raw_cut - start
        self._sent = cut - first
