"""The moderator in force, rebuilt when the extra list files change, without a restart.

The one part of the moderation layer that touches files. `reload_if_changed` is cheap enough to
call before every request: it stats the files at most once per `check_seconds`, and rebuilds only
when one changed (modification time, size or inode: an editor that saves by renaming a new file in
changes the inode). The new moderator is built off to the side and swapped in with one assignment,
so a request in flight keeps the moderator it started with, and a reader never sees a half-built
one. A rebuild of a 10,000-term list takes tens of milliseconds: call it from a worker thread
(`asyncio.to_thread`) or a periodic task rather than on the event loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from qfserve.chat.safety.moderator import Moderator

log = logging.getLogger(__name__)

# (mtime in ns, size, inode) of each file; None for one that cannot be stat'ed.
_Signature = tuple[tuple[int, int, int] | None, ...]


class ModeratorSource:
    def __init__(
        self,
        paths: Sequence[Path] = (),
        *,
        check_seconds: float = 5.0,
        disabled: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Build the first moderator. A missing or unreadable list file raises (OSError or
        UnicodeDecodeError): a wrong setting must fail at start-up, not serve without its list."""
        self._paths = tuple(paths)
        self._check_seconds = check_seconds
        self._disabled = tuple(disabled)
        self._clock = clock
        self._lock = threading.Lock()
        # Stat before reading: a change made during the read is then seen at the next check.
        self._signature = self._stat()
        self._failed: _Signature | None = None
        self._moderator = Moderator.from_files(self._paths, disabled=self._disabled)
        self._next_check = clock() + check_seconds

    @property
    def moderator(self) -> Moderator:
        """Take it once per request and keep it for the request's whole life (its stream too)."""
        return self._moderator

    @property
    def paths(self) -> tuple[Path, ...]:
        return self._paths

    def reload_if_changed(self) -> bool:
        """Rebuild the moderator if a list file changed; True when a new one was swapped in.

        A file that became unreadable (missing, half-written, not UTF-8) keeps the previous
        moderator in force: an editing mistake must not silently drop a list. It is logged once per
        change and tried again at each check until it reads.
        """
        now = self._clock()
        if now < self._next_check or not self._paths:
            return False
        # Another thread is already checking: its result will do for this request too.
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._next_check = now + self._check_seconds
            signature = self._stat()
            if signature == self._signature:
                return False
            try:
                moderator = Moderator.from_files(self._paths, disabled=self._disabled)
            except (OSError, UnicodeDecodeError) as exc:
                if signature != self._failed:
                    log.error("safety lists not reloaded, the previous lists stay: %s", exc)
                    self._failed = signature
                return False
            self._signature, self._failed = signature, None
            self._moderator = moderator
            log.info(
                "safety lists reloaded: %d terms from %d files",
                len(moderator.words),
                len(self._paths),
            )
            return True
        finally:
            self._lock.release()

    def _stat(self) -> _Signature:
        signature: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError:
                signature.append(None)
            else:
                signature.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(signature)
