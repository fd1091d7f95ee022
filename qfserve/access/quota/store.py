"""Where quota counters live: the store protocol, and the exact in-process store."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from qfserve.access.quota.windows import Charge, ChargeResult, Window, fits


class QuotaStoreUnavailable(Exception):
    """A shared store could not answer. The enforcer turns it into its failure policy; it never
    reaches a client, and it carries no type of the store's client library."""


class QuotaStore(Protocol):
    """Counters per (app, window, window start).

    `charge` is the one operation that must be atomic: it checks every charge with `fits`, in the
    order given, and either adds every cost or none. Counters whose window has ended may be dropped
    at any time after its end; the total window never ends. Shared stores raise
    `QuotaStoreUnavailable` when they cannot answer; the in-process store never does.
    """

    # True for a store that several gateway processes share (the failure policy applies to it).
    shared: bool

    async def charge(self, app_id: str, charges: Sequence[Charge], now: float) -> ChargeResult:
        """Admit and charge the request everywhere, or refuse it at the first window it misses."""
        ...

    async def adjust(self, app_id: str, window: Window, start: int, delta: int) -> None:
        """Add `delta` (negative: a refund) to an existing counter, never below zero. A counter
        that is gone (its window ended) is left gone: refunds never resurrect a window."""
        ...

    async def restore_total(self, app_id: str, used: int) -> None:
        """Raise the app's total counter to at least `used` (from a durable record, such as the
        usage ledger): idempotent, and safe to run from every process at start-up."""
        ...

    async def prepare(self) -> None:
        """Get ready to answer (connect, load scripts); a shared store may raise here too."""
        ...

    async def close(self) -> None: ...


class MemoryQuotaStore:
    """Exact for one process; safe from threads and from coroutines alike.

    Every operation holds one lock for its whole read-check-write and never awaits inside it, so it
    is atomic for threads and for the event loop at once, and never blocks the loop for longer than
    a few dict operations. Memory stays bounded: once a second (of the `now` callers pass) counters
    whose window has ended are dropped, which leaves about two counters per window per active app,
    plus one total counter per app that has a total limit.
    """

    shared = False

    def __init__(self, *, sweep_seconds: float = 1.0) -> None:
        self._lock = threading.Lock()
        # (app, window, start) -> (used, end); end is None for the total window.
        self._counters: dict[tuple[str, Window, int], tuple[int, int | None]] = {}
        self._sweep_seconds = sweep_seconds
        self._next_sweep = float("-inf")

    async def charge(self, app_id: str, charges: Sequence[Charge], now: float) -> ChargeResult:
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            used = {c.window: self._count(app_id, c.window, c.start) for c in charges}
            for c in charges:
                if not fits(used[c.window], c.cost, c.limit):
                    return ChargeResult(refused=c.window, used=used)
            for c in charges:
                used[c.window] += c.cost
                self._counters[(app_id, c.window, c.start)] = (used[c.window], c.end)
            return ChargeResult(refused=None, used=used)

    async def adjust(self, app_id: str, window: Window, start: int, delta: int) -> None:
        key = (app_id, window, start)
        with self._lock:
            if (counter := self._counters.get(key)) is not None:
                self._counters[key] = (max(0, counter[0] + delta), counter[1])

    async def restore_total(self, app_id: str, used: int) -> None:
        key = (app_id, Window.TOTAL, 0)
        with self._lock:
            current = self._counters.get(key, (0, None))[0]
            self._counters[key] = (max(current, used), None)

    async def prepare(self) -> None:
        return None

    async def close(self) -> None:
        with self._lock:
            self._counters.clear()

    def _count(self, app_id: str, window: Window, start: int) -> int:
        counter = self._counters.get((app_id, window, start))
        return 0 if counter is None else counter[0]

    def __len__(self) -> int:
        return len(self._counters)

    def _sweep(self, now: float) -> None:
        # Caller holds the lock. A window [start, end) can no longer be charged once now >= end.
        ended = [key for key, (_, end) in self._counters.items() if end is not None and end <= now]
        for key in ended:
            del self._counters[key]
        self._next_sweep = now + self._sweep_seconds
