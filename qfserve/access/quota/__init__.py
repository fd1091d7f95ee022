"""Per-app quotas: fixed windows (`windows`), counters in memory or in Redis, and the enforcer.

The routes' part:

    enforcer = QuotaEnforcer.from_url(settings.redis_url, failure=..., processes=...)
    ticket = await enforcer.admit(app_id, limits, reserve_tokens=prompt + max_output_tokens)
    response.headers.update(ticket.headers())
    ...
    await enforcer.settle(ticket, actual_tokens=prompt + completion)
"""

from qfserve.access.quota.admission import Admission, RateLimitState, Ticket
from qfserve.access.quota.enforcer import FailurePolicy, QuotaEnforcer, QuotaHealth
from qfserve.access.quota.limits import QuotaLimits
from qfserve.access.quota.store import MemoryQuotaStore, QuotaStore, QuotaStoreUnavailable
from qfserve.access.quota.windows import CHECK_ORDER, ERRORS, Window

__all__ = [
    "CHECK_ORDER",
    "ERRORS",
    "Admission",
    "FailurePolicy",
    "MemoryQuotaStore",
    "QuotaEnforcer",
    "QuotaHealth",
    "QuotaLimits",
    "QuotaStore",
    "QuotaStoreUnavailable",
    "RateLimitState",
    "Ticket",
    "Window",
]
