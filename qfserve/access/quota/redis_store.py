"""Quota counters in Redis, shared by every gateway process: each operation is one Lua script.

Redis runs a script to completion before any other command, so a script's reads and writes are one
atomic step across all the gateways: no check in Python is ever followed by a write from Python.
Scripts run by EVALSHA; when the server does not know one (first use, restart, SCRIPT FLUSH) it is
loaded with SCRIPT LOAD and run again.

Keys are `{prefix}:{{app}}:{window}:{start}`, e.g. `qfserve:quota:{42}:rpm:1700000040`. The braces
are a Redis Cluster hash tag: all of one app's counters share a slot, as one script's keys must.
Every window's counter expires a grace period after its window ends (the grace covers clocks of
gateways that lag a little), so Redis memory holds only live windows; the total counter never
expires, and lives as long as Redis keeps its data (use persistence, or `restore_total`).

Every redis-py exception is translated here into `QuotaStoreUnavailable`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from qfserve.access.quota.store import QuotaStoreUnavailable
from qfserve.access.quota.windows import Charge, ChargeResult, Window

# Seconds a counter outlives its window.
EXPIRY_GRACE_SECONDS = 30


class _Script:
    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        # EVALSHA names a script by the SHA-1 of its text.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


# KEYS[i]: window i's counter, in check order. ARGV[3i-2], ARGV[3i-1], ARGV[3i]: its limit, its
# cost, and its TTL in seconds (0: never expires). Returns {refused, used_1, ..., used_n}: refused
# is the 1-based index of the first window the request does not fit, 0 once it is charged in all;
# used_i is counter i after the call. The fit rule is `windows.fits`, repeated.
_CHARGE = _Script("""
local n = #KEYS
local used = {}
local refused = 0
for i = 1, n do
  used[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if refused == 0 then
    local limit = tonumber(ARGV[3 * i - 2])
    local cost = tonumber(ARGV[3 * i - 1])
    if not (used[i] + cost <= limit or (used[i] == 0 and limit > 0)) then
      refused = i
    end
  end
end
if refused == 0 then
  for i = 1, n do
    used[i] = redis.call('INCRBY', KEYS[i], tonumber(ARGV[3 * i - 1]))
    local ttl = tonumber(ARGV[3 * i])
    if ttl > 0 then
      redis.call('EXPIRE', KEYS[i], ttl)
    end
  end
end
return {refused, unpack(used)}
""")

# KEYS[1]: a counter; ARGV[1]: delta. A missing counter stays missing (its window has ended, and a
# new key would have no TTL); INCRBY keeps the key's TTL.
_ADJUST = _Script("""
local used = redis.call('GET', KEYS[1])
if not used then
  return -1
end
local delta = tonumber(ARGV[1])
used = tonumber(used)
if used + delta < 0 then
  delta = -used
end
return redis.call('INCRBY', KEYS[1], delta)
""")

# KEYS[1]: a total counter; ARGV[1]: a count it must be at least.
_RESTORE = _Script("""
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if used < floor then
  redis.call('SET', KEYS[1], floor)
  return floor
end
return used
""")


class RedisQuotaStore:
    """A `QuotaStore` on a redis-py asyncio client, for one event loop."""

    shared = True

    def __init__(self, client: Redis, *, prefix: str = "qfserve:quota") -> None:
        self._client = client
        self._prefix = prefix

    @classmethod
    def from_url(
        cls, url: str, *, timeout_seconds: float = 0.5, prefix: str = "qfserve:quota"
    ) -> RedisQuotaStore:
        """A store with its own client: short timeouts, since a request waits on every call, and
        one immediate retry, which reconnects a pooled connection that Redis dropped (restart).
        Were a lost reply to make that retry charge twice, the error is on the safe side."""
        client = Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, prefix=prefix)

    def key(self, app_id: str, window: Window, start: int) -> str:
        return f"{self._prefix}:{{{app_id}}}:{window.value}:{start}"

    async def charge(self, app_id: str, charges: Sequence[Charge], now: float) -> ChargeResult:
        if not charges:
            return ChargeResult(refused=None, used={})
        keys = [self.key(app_id, c.window, c.start) for c in charges]
        args: list[int] = []
        for c in charges:
            ttl = 0 if c.end is None else max(1, math.ceil(c.end - now)) + EXPIRY_GRACE_SECONDS
            args += [c.limit, c.cost, ttl]
        reply = await self._run(_CHARGE, keys, args)
        if not isinstance(reply, list) or len(reply) != len(charges) + 1:
            raise QuotaStoreUnavailable(f"unexpected reply from the quota script: {reply!r}")
        refused, *used = (int(value) for value in reply)
        return ChargeResult(
            refused=charges[refused - 1].window if refused else None,
            used={c.window: count for c, count in zip(charges, used, strict=True)},
        )

    async def adjust(self, app_id: str, window: Window, start: int, delta: int) -> None:
        await self._run(_ADJUST, [self.key(app_id, window, start)], [delta])

    async def restore_total(self, app_id: str, used: int) -> None:
        await self._run(_RESTORE, [self.key(app_id, Window.TOTAL, 0)], [used])

    async def prepare(self) -> None:
        """Load every script now (at start-up) rather than on first use."""
        try:
            for script in (_CHARGE, _ADJUST, _RESTORE):
                await self._client.script_load(script.source)
        except (RedisError, OSError) as exc:
            raise QuotaStoreUnavailable(_describe(exc)) from exc

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError) as exc:
            raise QuotaStoreUnavailable(_describe(exc)) from exc

    async def _run(self, script: _Script, keys: list[str], args: list[int]) -> object:
        try:
            try:
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # The server lost its script cache (a restart, SCRIPT FLUSH): load it, run again.
                await self._client.script_load(script.source)
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            raise QuotaStoreUnavailable(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    return f"redis: {type(exc).__name__}: {exc}"
