"""Turning a stream of token bytes into text that never shows a stop string.

Pure and engine-independent: the embedded engine feeds it the bytes of each sampled token; it
returns the text that is safe to send. Two things are held back: the incomplete tail of a multi-byte
UTF-8 character, and the longest tail of the text that could still become a stop string.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


@dataclass(slots=True)
class StopMatcher:
    stops: tuple[str, ...] = ()
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    _pending: str = ""
    stopped: bool = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text now safe to emit ("" while holding back)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        for stop in self.stops:
            at = self._pending.find(stop)
            if at >= 0:
                self.stopped = True
                text, self._pending = self._pending[:at], ""
                return text
        keep = self._held_tail_length()
        cut = len(self._pending) - keep
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return text

    def flush(self) -> str:
        """The generation ended without a stop string: release what was held back.

        An answer cut inside a multi-byte character (by the output limit) ends before it: the
        incomplete bytes are dropped, not sent as U+FFFD."""
        if self.stopped:
            return ""
        text, self._pending = self._pending, ""
        self._decoder.reset()
        return text

    def _held_tail_length(self) -> int:
        """Length of the longest suffix of the pending text that is a proper prefix of a stop."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest
