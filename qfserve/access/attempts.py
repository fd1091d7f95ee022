"""Failed client authentications, limited per client id and per client address.

As the `limits` library splits them: a `Rate` (so many per so many seconds), a counter storage
(`MemoryCounters`, this process only), and the algorithm over it (`FixedWindowLimiter`).
`FailedAttempts` is the token route's policy on top: while a client id or an address has used up
its failures for the window, further attempts are refused before any secret is checked.

Only failures are counted, so an app that logs in correctly is never slowed down; a client id under
attack is refused for the rest of its window, whoever asks.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from qfserve.errors import OAuthError

# Client ids are the client's own strings: the counters keep no more of one than this.
_KEY_CHARS = 64


@dataclass(frozen=True, slots=True)
class Rate:
    """`amount` per `seconds`; an amount of 0 or less: no limit."""

    amount: int
    seconds: float

    @property
    def unlimited(self) -> bool:
        return self.amount <= 0


class CounterStorage(Protocol):
    """Counters that expire: what a limiter keeps. Implementations are thread-safe."""

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Adds `amount` to the counter, started (expiring `expiry` seconds from now) if it is
        absent or expired; returns the new count."""

    def get(self, key: str) -> int:
        """The counter's count; 0 when absent or expired."""

    def expires_in(self, key: str) -> float:
        """Seconds until the counter expires; 0 when absent or expired."""


class MemoryCounters:
    """Counters in this process's memory, at most `max_keys` of them: expired ones are swept once
    a while, and when the storage is full the oldest counter makes room for a new one."""

    def __init__(
        self, *, max_keys: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._counts: dict[str, tuple[float, int]] = {}  # key: (expires at, count), oldest first
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._counts)

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        with self._lock:
            now = self._clock()
            expires_at, count = self._counts.get(key, (0.0, 0))
            if expires_at <= now:
                # A new window goes to the end, so the dict stays ordered by age.
                self._counts.pop(key, None)
                self._make_room(now, expiry)
                expires_at, count = now + expiry, 0
            count += amount
            self._counts[key] = (expires_at, count)
            return count

    def get(self, key: str) -> int:
        with self._lock:
            expires_at, count = self._counts.get(key, (0.0, 0))
            return count if expires_at > self._clock() else 0

    def expires_in(self, key: str) -> float:
        with self._lock:
            expires_at, _ = self._counts.get(key, (0.0, 0))
            return max(0.0, expires_at - self._clock())

    def _make_room(self, now: float, expiry: float) -> None:
        if now >= self._next_sweep:
            self._counts = {k: v for k, v in self._counts.items() if v[0] > now}
            self._next_sweep = now + expiry
        while len(self._counts) >= self._max_keys:
            del self._counts[next(iter(self._counts))]


class FixedWindowLimiter:
    """A fixed window per key: it starts at the key's first hit and lasts the rate's seconds."""

    def __init__(self, storage: CounterStorage) -> None:
        self._storage = storage

    def hit(self, rate: Rate, key: str, cost: int = 1) -> None:
        if not rate.unlimited:
            self._storage.incr(key, rate.seconds, cost)

    def test(self, rate: Rate, key: str) -> bool:
        """Whether the key may still be hit in its window."""
        return rate.unlimited or self._storage.get(key) < rate.amount

    def reset_in(self, key: str) -> float:
        """Seconds until the key's window ends."""
        return self._storage.expires_in(key)


class TooManyFailedAttempts(OAuthError):
    """Refused before the secret is checked; `retry_after` seconds until the window ends."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            429,
            "invalid_client",
            f"too many failed attempts, try again in {retry_after} seconds",
        )
        self.retry_after = retry_after


class FailedAttempts:
    """The token route's limit on failed authentications (unknown client id, wrong secret)."""

    def __init__(
        self,
        *,
        per_client_id: Rate,
        per_address: Rate,
        limiter: FixedWindowLimiter | None = None,
    ) -> None:
        self._per_client_id = per_client_id
        self._per_address = per_address
        self._limiter = limiter or FixedWindowLimiter(MemoryCounters())

    @staticmethod
    def _keys(client_id: str, address: str) -> tuple[str, str]:
        return f"client_id:{client_id[:_KEY_CHARS]}", f"address:{address}"

    def check(self, client_id: str, address: str) -> None:
        """Raises `TooManyFailedAttempts` while the client id or the address has no failures
        left in its window."""
        client_key, address_key = self._keys(client_id, address)
        waits = [
            self._limiter.reset_in(key)
            for rate, key in ((self._per_client_id, client_key), (self._per_address, address_key))
            if not self._limiter.test(rate, key)
        ]
        if waits:
            raise TooManyFailedAttempts(max(1, math.ceil(max(waits))))

    def failed(self, client_id: str, address: str) -> None:
        client_key, address_key = self._keys(client_id, address)
        self._limiter.hit(self._per_client_id, client_key)
        self._limiter.hit(self._per_address, address_key)
