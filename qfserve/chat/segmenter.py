"""Cutting a streamed answer into the sentence segments that Qianfan's stream events carry.

A segment ends after a sentence end (。！？；.!? or a newline) once it holds `min_chars`
characters, or is flushed whole when it reaches `max_tokens` tokens; the caller flushes it on time
too (`flush`), so a slow model still streams. Pure: time is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

SENTENCE_ENDS = frozenset("。！？；.!?\n")


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    token_count: int


class Segmenter:
    def __init__(self, *, min_chars: int, max_tokens: int) -> None:
        self._min_chars = min_chars
        self._max_tokens = max_tokens
        self._text = ""
        self._tokens = 0

    @property
    def empty(self) -> bool:
        return not self._text and not self._tokens

    def push(self, text: str, token_count: int) -> list[Segment]:
        """Add a delta; return the segments it completes (usually none or one).

        Tokens are counted in the segment their delta joined: a delta cut in two gives its whole
        count to the first part, so the segments' counts always add up to the answer's.
        """
        self._text += text
        self._tokens += token_count
        done: list[Segment] = []
        while (cut := self._sentence_cut()) is not None:
            done.append(Segment(self._text[:cut], self._tokens))
            self._text, self._tokens = self._text[cut:], 0
        if self._tokens >= self._max_tokens and self._text:
            done.append(self.flush())
        return done

    def flush(self) -> Segment:
        segment = Segment(self._text, self._tokens)
        self._text, self._tokens = "", 0
        return segment

    def _sentence_cut(self) -> int | None:
        """Index just past the first sentence end at or beyond `min_chars`, if any."""
        for index in range(self._min_chars - 1, len(self._text)):
            if self._text[index] in SENTENCE_ENDS:
                # Keep a run of ends together ("...", "!\n\n") in one segment.
                end = index + 1
                while end < len(self._text) and self._text[end] in SENTENCE_ENDS:
                    end += 1
                if end == len(self._text):
                    return None  # more ends may follow; wait for the next delta
                return end
        return None
