"""What an admission decision hands back to the routes: a ticket to settle, and the headers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qfserve.access.quota.limits import QuotaLimits
from qfserve.access.quota.windows import ERRORS, Charge, ChargeResult, Window
from qfserve.errors import QuotaExceeded


@dataclass(frozen=True, slots=True)
class RateLimitState:
    """What the four `X-Ratelimit-*` headers say: the rpm and the tpm window of the request.

    Limits are the app's rpm and tpm; remainders are what the window has left after this request's
    charge (before it, for a refused request), never negative. The qianfan SDK reads
    `Limit-Requests` as requests per minute and `Limit-Tokens` as tokens per minute to tune its own
    client-side limiters, hence these two windows. An unset limit reads 0 in both its headers: 0 is
    what the SDK takes for "no limit" (it switches its limiter off).
    """

    limit_requests: int = 0
    limit_tokens: int = 0
    remaining_requests: int = 0
    remaining_tokens: int = 0

    def headers(self) -> dict[str, str]:
        return {
            "X-Ratelimit-Limit-Requests": str(self.limit_requests),
            "X-Ratelimit-Limit-Tokens": str(self.limit_tokens),
            "X-Ratelimit-Remaining-Requests": str(self.remaining_requests),
            "X-Ratelimit-Remaining-Tokens": str(self.remaining_tokens),
        }


@dataclass(slots=True, eq=False)
class Ticket:
    """An admitted request. Settle it when its answer ends or fails; settling again is a no-op."""

    app_id: str
    reserved_tokens: int
    # The minute the reservation was charged in; None when the app has no tpm limit.
    tpm_start: int | None
    rate_limits: RateLimitState
    # Charged in the in-process fallback store while the shared store was unreachable.
    local: bool = False
    settled: bool = False

    def headers(self) -> dict[str, str]:
        return self.rate_limits.headers()


@dataclass(frozen=True, slots=True)
class Admission:
    """A decision: a ticket when admitted, the refusing window otherwise; headers either way."""

    ticket: Ticket | None
    refused: Window | None
    rate_limits: RateLimitState

    def headers(self) -> dict[str, str]:
        return self.rate_limits.headers()

    def error(self) -> QuotaExceeded | None:
        """The error a refused request answers with (a new instance each call, fit to raise)."""
        return None if self.refused is None else ERRORS[self.refused]()


def rate_limit_state(
    limits: QuotaLimits, charges: Sequence[Charge], result: ChargeResult
) -> RateLimitState:
    # Remainders come from the charge's own limit: in the local fallback that is this process's
    # share, which is what it will still admit, while the header's limit stays the app's.
    shares = {charge.window: charge.limit for charge in charges}

    def remaining(window: Window) -> int:
        if window not in shares:
            return 0
        return max(0, shares[window] - result.used.get(window, 0))

    return RateLimitState(
        limit_requests=limits.rpm or 0,
        limit_tokens=limits.tpm or 0,
        remaining_requests=remaining(Window.RPM),
        remaining_tokens=remaining(Window.TPM),
    )
