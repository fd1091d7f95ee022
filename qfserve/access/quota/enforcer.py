"""The facade the routes call: admit before the first byte, settle when the answer ends.

What happens while the shared store (Redis) cannot be reached is the `failure` setting, and it is
never silent: the first failure of an outage is logged at WARNING (once, not per request), the end
of it at INFO, and `health()` exposes both for metrics.

- "reject": requests of apps that have limits are refused with EngineUnavailable (error 2, which
  the qianfan SDK retries), so no quota is ever exceeded; apps without limits are still served.
- "local": every process enforces the limits on its own, in memory, each allowed a
  `1/processes` share (rounded up, so no small limit becomes zero) of what the window had left
  when this process last heard from Redis about it (or `restore_total` told it), so a total or
  daily quota it knows to be spent stays spent. Admissions made during the outage are not
  replayed into Redis afterwards: an outage can let through up to one more share per process.

While the store is down, one call per `retry_seconds` tries it again (the others go straight to
the policy, without waiting on a timeout); the first that succeeds ends the outage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal, ParamSpec, TypeVar

from qfserve.access.quota.admission import Admission, RateLimitState, Ticket, rate_limit_state
from qfserve.access.quota.limits import QuotaLimits
from qfserve.access.quota.store import MemoryQuotaStore, QuotaStore, QuotaStoreUnavailable
from qfserve.access.quota.windows import Charge, ChargeResult, Window, plan, window_start
from qfserve.errors import EngineUnavailable

logger = logging.getLogger("qfserve.access.quota")

FailurePolicy = Literal["reject", "local"]
AppId = int | str
_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass(frozen=True, slots=True)
class QuotaHealth:
    """For metrics: gauges `shared` and `available`, counters `outages` and `degraded_requests`."""

    shared: bool  # a shared store (Redis) is configured
    available: bool  # it answered the last call; always True without one
    outages: int  # outages begun since start
    degraded_requests: int  # admissions decided by the failure policy instead of the store


class QuotaEnforcer:
    """Admission and settlement over one store; one instance per event loop (per process)."""

    def __init__(
        self,
        store: QuotaStore | None = None,
        *,
        failure: FailurePolicy = "reject",
        processes: int = 1,
        retry_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if failure not in ("reject", "local"):
            raise ValueError(f"quota failure policy must be 'reject' or 'local', not {failure!r}")
        if processes < 1:
            raise ValueError(f"gateway processes must be at least 1, not {processes}")
        self._store: QuotaStore = store if store is not None else MemoryQuotaStore()
        self._local = MemoryQuotaStore()  # the "local" policy's counters, used only in outages
        self._failure: FailurePolicy = failure
        self._processes = processes
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._down_since: float | None = None
        self._next_probe = 0.0
        self._outages = 0
        self._degraded = 0
        # (app, window) -> (window start, counter) as Redis last told this process: the local
        # policy's starting point. At most one entry per app and window.
        self._known: dict[tuple[str, Window], tuple[int, int]] = {}

    @classmethod
    def from_url(
        cls,
        redis_url: str = "",
        *,
        failure: FailurePolicy = "reject",
        processes: int = 1,
        timeout_seconds: float = 0.5,
        retry_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> QuotaEnforcer:
        """Counters in Redis when a URL is given, else in this process (exact for one process)."""
        store: QuotaStore | None = None
        if redis_url:
            # Imported here: redis-py is needed only when Redis is configured.
            from qfserve.access.quota.redis_store import RedisQuotaStore

            store = RedisQuotaStore.from_url(redis_url, timeout_seconds=timeout_seconds)
        return cls(
            store, failure=failure, processes=processes, retry_seconds=retry_seconds, clock=clock
        )

    async def decide(self, app_id: AppId, limits: QuotaLimits, reserve_tokens: int) -> Admission:
        """Admit and charge the request, or refuse it; raises EngineUnavailable under "reject"."""
        app = str(app_id)
        now = self._clock()
        charges = plan(limits, now, reserve_tokens)
        if not charges:
            # Nothing to enforce, so no store call: such an app is served even in an outage.
            ticket = Ticket(app, reserve_tokens, None, RateLimitState())
            return Admission(ticket, None, ticket.rate_limits)
        local = False
        try:
            result = await self._call(self._store.charge, app, charges, now)
            if self._failure == "local" and self._store.shared:
                self._remember(app, charges, result)
        except QuotaStoreUnavailable as exc:
            self._degraded += 1
            if self._failure == "reject":
                raise EngineUnavailable() from exc
            charges = tuple(self._share(app, charge) for charge in charges)
            result = await self._local.charge(app, charges, now)
            local = True
        state = rate_limit_state(limits, charges, result)
        if result.refused is not None:
            return Admission(None, result.refused, state)
        tpm_start = next((c.start for c in charges if c.window is Window.TPM), None)
        ticket = Ticket(app, reserve_tokens, tpm_start, state, local=local)
        return Admission(ticket, None, state)

    async def admit(self, app_id: AppId, limits: QuotaLimits, reserve_tokens: int) -> Ticket:
        """The ticket of an admitted request; raises the QuotaExceeded subclass of the first
        window that refuses it (see `windows`), or EngineUnavailable under "reject"."""
        admission = await self.decide(app_id, limits, reserve_tokens)
        error = admission.error()
        if error is not None:
            raise error
        assert admission.ticket is not None  # an admission has a ticket or a refusal
        return admission.ticket

    async def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        """Bring the reservation to the real count, in the minute it was charged in, if that is
        still the current one. Never raises for the store: a refund lost in an outage only leaves
        the minute over-counted, the safe side."""
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must not be negative, not {actual_tokens}")
        if ticket.settled:
            return
        ticket.settled = True
        delta = actual_tokens - ticket.reserved_tokens
        if ticket.tpm_start is None or delta == 0:
            return
        if window_start(Window.TPM, self._clock()) != ticket.tpm_start:
            return  # the minute has rolled over: nobody can spend a refund any more
        if ticket.local:
            await self._local.adjust(ticket.app_id, Window.TPM, ticket.tpm_start, delta)
            return
        with contextlib.suppress(QuotaStoreUnavailable):
            await self._call(self._store.adjust, ticket.app_id, Window.TPM, ticket.tpm_start, delta)

    async def restore_total(self, app_id: AppId, used: int) -> None:
        """Raise an app's total counter to at least `used`: the usage ledger's count of admitted
        requests, at start-up, since the in-process store forgets everything at exit and Redis
        whatever it does not persist. Raises EngineUnavailable if the store cannot be reached."""
        if used < 0:
            raise ValueError(f"used must not be negative, not {used}")
        app = str(app_id)
        known = self._known.get((app, Window.TOTAL), (0, 0))[1]
        self._known[(app, Window.TOTAL)] = (0, max(known, used))
        try:
            await self._call(self._store.restore_total, app, used)
        except QuotaStoreUnavailable as exc:
            raise EngineUnavailable() from exc

    async def prepare(self) -> bool:
        """Ready the store (Redis: load the scripts); False, and the outage logged, if the shared
        store cannot be reached: the failure policy then applies until it can."""
        try:
            await self._call(self._store.prepare)
        except QuotaStoreUnavailable:
            return False
        return True

    def health(self) -> QuotaHealth:
        return QuotaHealth(
            shared=self._store.shared,
            available=self._down_since is None,
            outages=self._outages,
            degraded_requests=self._degraded,
        )

    async def close(self) -> None:
        with contextlib.suppress(QuotaStoreUnavailable):
            await self._store.close()
        await self._local.close()

    async def _call(
        self, operation: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run a store operation, keeping the outage state. Only shared stores ever fail."""
        if self._down_since is not None:
            now = self._clock()
            if now < self._next_probe:
                raise QuotaStoreUnavailable("still unreachable; not tried again yet")
            # Claimed before awaiting, so that one call per interval probes, not every caller.
            self._next_probe = now + self._retry_seconds
        try:
            result = await operation(*args, **kwargs)
        except QuotaStoreUnavailable as exc:
            self._went_down(exc)
            raise
        self._came_back()
        return result

    def _went_down(self, exc: QuotaStoreUnavailable) -> None:
        if self._down_since is not None:
            return
        now = self._clock()
        self._down_since = now
        self._next_probe = now + self._retry_seconds
        self._outages += 1
        if self._failure == "reject":
            policy = "requests of apps with limits are refused with error 2"
        else:
            policy = f"each process enforces limits alone, with 1/{self._processes} of each"
        logger.warning("quota store unreachable (%s); until it answers, %s", exc, policy)

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        seconds = self._clock() - self._down_since
        self._down_since = None
        logger.info("quota store reachable again after %.1f s", seconds)

    def _remember(self, app: str, charges: tuple[Charge, ...], result: ChargeResult) -> None:
        for charge in charges:
            self._known[(app, charge.window)] = (charge.start, result.used[charge.window])

    def _share(self, app: str, charge: Charge) -> Charge:
        """This process's part of what the window had left when Redis last answered it."""
        known = self._known.get((app, charge.window))
        seen = known[1] if known is not None and known[0] == charge.start else 0
        left = max(0, charge.limit - seen)
        return replace(charge, limit=math.ceil(left / self._processes))
