"""Fixed-window quotas, apart from where the counters live.

Every limit is a counter per app and window. Windows are fixed and aligned to the clock, Unix time,
so that gateways with synchronised clocks agree on them:

    window  length         start of the window holding `now`   refused with
    total   forever        0                                   TotalLimit   19
    daily   one UTC day    now - now % 86400                   DailyLimit   17
    qps     one second     floor(now)                          QpsLimit     18
    rpm     one minute     now - now % 60                      RpmLimit     336501
    tpm     one minute     now - now % 60                      TpmLimit     336502

A request costs 1 in each request window and its token reservation (prompt + max_output_tokens) in
tpm. It is admitted when it fits in every window of its app that has a limit, and then, only then,
charged in all of them. The check and the charge are one atomic step in the store (a lock in memory,
one Lua script in Redis): with limit N exactly N requests of a window are admitted however many
arrive together, and a request refused by one window consumes nothing in the others.

A charge fits when `used + cost <= limit`, or when the window is still empty. The second way only
matters for a reservation larger than the whole tpm limit: refusing it would refuse it forever (and
the SDK retries 336502 in vain), so it is admitted alone, into a minute nobody has used, and fills
that minute; the app's rate stays at most max(tpm, one request) tokens per minute.

The first window that refuses names the error, in this order: total → daily → qps → rpm → tpm.
Windows that reset only tomorrow or never come first, so a client whose day is spent learns so at
once rather than retrying 18 or 336501 (the SDK retries those) towards a quota it cannot have;
then the request windows, shortest first; tokens last, the one that depends on the request's size.

Settling: when the answer ends, its tpm window gets back reservation - actual tokens (or is charged
the excess), never going below zero, and only while the minute it was charged in is still the
current one: a window that has rolled over is not refunded, nobody can spend it any more.

A window whose limit is None is neither checked nor counted: a limit set later starts from zero.
A counter is named by (app, window, start), so a new window is a new counter and an old one is
never read again; stores drop counters whose window has ended (the total counter never ends).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from qfserve.access.quota.limits import QuotaLimits
from qfserve.errors import DailyLimit, QpsLimit, QuotaExceeded, RpmLimit, TotalLimit, TpmLimit


class Window(StrEnum):
    """The five windows, declared in the order they are checked."""

    TOTAL = "total"
    DAILY = "daily"
    QPS = "qps"
    RPM = "rpm"
    TPM = "tpm"


CHECK_ORDER: tuple[Window, ...] = tuple(Window)

# Length in seconds; None for the window that never ends.
LENGTH: Mapping[Window, int | None] = {
    Window.TOTAL: None,
    Window.DAILY: 86_400,  # Unix time has no leap seconds: UTC days are exact multiples.
    Window.QPS: 1,
    Window.RPM: 60,
    Window.TPM: 60,
}

ERRORS: Mapping[Window, type[QuotaExceeded]] = {
    Window.TOTAL: TotalLimit,
    Window.DAILY: DailyLimit,
    Window.QPS: QpsLimit,
    Window.RPM: RpmLimit,
    Window.TPM: TpmLimit,
}


@dataclass(frozen=True, slots=True)
class Charge:
    """One window's part of a request: add `cost` to the counter `start` names, if it fits."""

    window: Window
    start: int
    end: int | None  # when the window ends (Unix seconds); None: never
    limit: int
    cost: int


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """A store's answer: the first window the request did not fit (None: charged everywhere),
    and every planned window's counter after the call, charged or not."""

    refused: Window | None
    used: Mapping[Window, int]


def window_start(window: Window, now: float) -> int:
    length = LENGTH[window]
    return 0 if length is None else math.floor(now / length) * length


def fits(used: int, cost: int, limit: int) -> bool:
    """The admission rule, the same in every store (the Lua script repeats it).

    `limit > 0` keeps a zero limit closed even to the first request: the enforcer's local fallback
    hands out zero when a window was already spent before Redis went away.
    """
    return used + cost <= limit or (used == 0 and limit > 0)


def plan(limits: QuotaLimits, now: float, reserve_tokens: int) -> tuple[Charge, ...]:
    """The charges one request makes, in check order; empty for an app without limits."""
    if reserve_tokens < 0:
        raise ValueError(f"reserve_tokens must not be negative, not {reserve_tokens}")
    values = {
        Window.TOTAL: limits.total,
        Window.DAILY: limits.daily,
        Window.QPS: limits.qps,
        Window.RPM: limits.rpm,
        Window.TPM: limits.tpm,
    }
    charges = []
    for window in CHECK_ORDER:
        limit = values[window]
        if limit is None:
            continue
        start = window_start(window, now)
        length = LENGTH[window]
        cost = reserve_tokens if window is Window.TPM else 1
        end = None if length is None else start + length
        charges.append(Charge(window, start, end, limit, cost))
    return tuple(charges)
