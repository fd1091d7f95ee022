"""The quota algorithms over the in-process store, on a hand-driven clock."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from qfserve.access.quota import (
    MemoryQuotaStore,
    QuotaEnforcer,
    QuotaLimits,
    QuotaStoreUnavailable,
    Ticket,
    Window,
)
from qfserve.access.quota.windows import Charge, ChargeResult, plan
from qfserve.errors import (
    DailyLimit,
    EngineUnavailable,
    QpsLimit,
    QuotaExceeded,
    RpmLimit,
    TotalLimit,
    TpmLimit,
)

MIDNIGHT = 1_699_920_000.0  # 2023-11-14T00:00:00Z: a second, minute and UTC day all start here
MINUTE, DAY = 60.0, 86_400.0


class Clock:
    def __init__(self, now: float = MIDNIGHT) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def enforcer(clock: Clock, **kwargs: Any) -> QuotaEnforcer:
    return QuotaEnforcer(clock=clock, **kwargs)


def admit(quota: QuotaEnforcer, limits: QuotaLimits, tokens: int = 0, app: int = 1) -> Ticket:
    return asyncio.run(quota.admit(app, limits, tokens))


def refused(quota: QuotaEnforcer, limits: QuotaLimits, tokens: int = 0) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as caught:
        admit(quota, limits, tokens)
    return caught.value


@pytest.mark.parametrize(
    ("limits", "error", "code", "last_moment", "next_window"),
    [
        (QuotaLimits(qps=3), QpsLimit, 18, 0.999, 1.0),
        (QuotaLimits(rpm=3), RpmLimit, 336501, MINUTE - 0.001, MINUTE),
        (QuotaLimits(daily=3), DailyLimit, 17, DAY - 0.001, DAY),
        (QuotaLimits(total=3), TotalLimit, 19, 10 * 365 * DAY, None),
    ],
)
def test_request_windows_admit_exactly_the_limit(
    limits: QuotaLimits,
    error: type[QuotaExceeded],
    code: int,
    last_moment: float,
    next_window: float | None,
) -> None:
    clock = Clock()
    quota = enforcer(clock)
    for _ in range(3):
        admit(quota, limits)
    clock.now = MIDNIGHT + last_moment
    caught = refused(quota, limits)
    assert type(caught) is error and caught.code == code
    if next_window is not None:
        clock.now = MIDNIGHT + next_window
        for _ in range(3):
            admit(quota, limits)
        assert type(refused(quota, limits)) is error


def test_tokens_per_minute_admit_exactly_the_budget() -> None:
    clock = Clock()
    quota, limits = enforcer(clock), QuotaLimits(tpm=100)
    for tokens in (40, 40, 20):
        admit(quota, limits, tokens)
    caught = refused(quota, limits, 1)
    assert type(caught) is TpmLimit and caught.code == 336502
    clock.now += MINUTE
    admit(quota, limits, 100)
    assert type(refused(quota, limits, 1)) is TpmLimit


def test_a_reservation_larger_than_the_limit_is_admitted_alone() -> None:
    clock = Clock()
    quota, limits = enforcer(clock), QuotaLimits(tpm=100)
    admit(quota, limits, 150)  # a fresh minute: admitted, and it fills it
    assert type(refused(quota, limits, 1)) is TpmLimit
    clock.now += MINUTE
    admit(quota, limits, 10)
    assert type(refused(quota, limits, 150)) is TpmLimit  # not alone any more


def test_windows_are_charged_all_or_nothing() -> None:
    clock = Clock()
    quota, limits = enforcer(clock), QuotaLimits(qps=2, rpm=2, daily=3)
    admit(quota, limits)
    admit(quota, limits)
    clock.now += 1  # a new second: qps has room, rpm none
    for _ in range(5):
        assert type(refused(quota, limits)) is RpmLimit
    clock.now += MINUTE
    # Had the refusals consumed qps or daily, these would fail with 18 or 17.
    admit(quota, limits)
    assert type(refused(quota, limits)) is DailyLimit


def test_a_token_refusal_consumes_no_request() -> None:
    clock = Clock()
    quota, limits = enforcer(clock), QuotaLimits(rpm=2, tpm=100)
    ticket = admit(quota, limits, 100)
    for _ in range(3):
        assert type(refused(quota, limits, 50)) is TpmLimit
    asyncio.run(quota.settle(ticket, 0))
    admit(quota, limits, 50)
    assert type(refused(quota, limits, 1)) is RpmLimit


def test_the_first_window_in_check_order_names_the_error() -> None:
    every = QuotaLimits(qps=1, rpm=1, tpm=1, daily=1, total=1)
    quota = enforcer(Clock())
    admit(quota, every, 1)  # now every window is full
    expected: list[tuple[QuotaLimits, type[QuotaExceeded]]] = [
        (every, TotalLimit),
        (QuotaLimits(qps=1, rpm=1, tpm=1, daily=1), DailyLimit),
        (QuotaLimits(qps=1, rpm=1, tpm=1), QpsLimit),
        (QuotaLimits(rpm=1, tpm=1), RpmLimit),
        (QuotaLimits(tpm=1), TpmLimit),
    ]
    assert [type(refused(quota, limits, 1)) for limits, _ in expected] == [e for _, e in expected]


def test_settling_returns_the_unused_reservation() -> None:
    clock = Clock()
    quota, limits = enforcer(clock), QuotaLimits(tpm=100)
    ticket = admit(quota, limits, 80)
    asyncio.run(quota.settle(ticket, 30))
    asyncio.run(quota.settle(ticket, 0))  # a second settlement changes nothing
    admit(quota, limits, 70)
    assert type(refused(quota, limits, 1)) is TpmLimit


def test_settling_charges_tokens_beyond_the_reservation() -> None:
    quota, limits = enforcer(Clock()), QuotaLimits(tpm=100)
    asyncio.run(quota.settle(admit(quota, limits, 10), 60))
    admit(quota, limits, 40)
    assert type(refused(quota, limits, 1)) is TpmLimit


def test_a_rolled_over_window_is_not_refunded() -> None:
    clock = Clock()
    # A store that keeps ended windows, so that the old minute can be looked at again.
    quota = enforcer(clock, store=MemoryQuotaStore(sweep_seconds=DAY))
    limits = QuotaLimits(tpm=100)
    ticket = admit(quota, limits, 100)
    clock.now += MINUTE
    asyncio.run(quota.settle(ticket, 0))
    admit(quota, limits, 100)  # the new minute has its own budget, untouched by the refund
    clock.now -= MINUTE  # and the old minute was not refunded either
    assert type(refused(quota, limits, 1)) is TpmLimit


def test_a_refund_never_takes_a_counter_below_zero() -> None:
    store = MemoryQuotaStore()
    charge = Charge(Window.TPM, 0, 60, limit=100, cost=10)
    asyncio.run(store.charge("a", [charge], 0.0))
    asyncio.run(store.adjust("a", Window.TPM, 0, -50))
    assert asyncio.run(store.charge("a", [charge], 0.0)).used == {Window.TPM: 10}
    asyncio.run(store.adjust("a", Window.TPM, 60, -50))  # no such window: not created
    assert len(store) == 1


def test_headers_describe_the_minute_windows() -> None:
    quota = enforcer(Clock())
    limits = QuotaLimits(qps=5, rpm=10, tpm=1000)
    assert admit(quota, limits, 100).headers() == {
        "X-Ratelimit-Limit-Requests": "10",
        "X-Ratelimit-Limit-Tokens": "1000",
        "X-Ratelimit-Remaining-Requests": "9",
        "X-Ratelimit-Remaining-Tokens": "900",
    }
    admission = asyncio.run(quota.decide(1, limits, 901))
    assert admission.ticket is None and admission.refused is Window.TPM
    assert isinstance(admission.error(), TpmLimit)
    assert admission.headers()["X-Ratelimit-Remaining-Tokens"] == "900"  # nothing was charged
    assert admission.headers()["X-Ratelimit-Remaining-Requests"] == "9"


def test_unset_limits_read_zero_in_the_headers() -> None:
    quota = enforcer(Clock())
    headers = admit(quota, QuotaLimits(qps=5), 100).headers()
    assert set(headers.values()) == {"0"}
    assert admit(quota, QuotaLimits(), 10**9).headers() == headers


def test_limits_merge_defaults_with_overrides() -> None:
    defaults = QuotaLimits.from_config(qps=5, rpm=0, tpm=1000)
    assert defaults == QuotaLimits(qps=5, tpm=1000)
    merged = defaults.overridden(qps=None, rpm=60, tpm=0, total=7)
    assert merged == QuotaLimits(qps=5, rpm=60, total=7)
    assert QuotaLimits().unlimited and not merged.unlimited
    for bad in ({"qps": 0}, {"rpm": -1}, {"daily": True}):
        with pytest.raises(ValueError):
            QuotaLimits(**bad)
    with pytest.raises(ValueError):
        defaults.overridden(rpm=-1)


def test_memory_stays_bounded() -> None:
    store = MemoryQuotaStore()
    limits = QuotaLimits(qps=10, rpm=1000, tpm=10**6, daily=10**6, total=10**6)

    async def three_hours() -> None:
        for second in range(3 * 3600):
            now = MIDNIGHT + second
            await store.charge("a", plan(limits, now, 5), now)

    asyncio.run(three_hours())
    # One counter of each window now alive, plus at most one that ended less than a second ago.
    assert len(store) <= 6


def test_the_memory_store_is_exact_across_threads() -> None:
    store = MemoryQuotaStore()
    charges = plan(QuotaLimits(rpm=100), MIDNIGHT, 0)
    results: list[ChargeResult] = []
    lock = threading.Lock()

    async def fire() -> None:
        for _ in range(50):
            result = await store.charge("a", charges, MIDNIGHT)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=asyncio.run, args=(fire(),)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 300
    assert sum(result.refused is None for result in results) == 100


class FlakyStore(MemoryQuotaStore):
    """A shared store that can be switched off, for the failure policies."""

    shared = True

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    async def charge(self, app_id: str, charges: Sequence[Charge], now: float) -> ChargeResult:
        self.calls += 1
        if self.down:
            raise QuotaStoreUnavailable("switched off")
        return await super().charge(app_id, charges, now)


def test_reject_policy_answers_error_2_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    clock, store = Clock(), FlakyStore()
    quota = enforcer(clock, store=store, failure="reject", retry_seconds=1.0)
    limits = QuotaLimits(rpm=100)
    admit(quota, limits)
    store.down = True
    caplog.set_level(logging.INFO, logger="qfserve.access.quota")
    for _ in range(5):
        with pytest.raises(EngineUnavailable) as caught:
            admit(quota, limits)
        assert caught.value.code == 2
    assert store.calls == 2  # one failure, then no retry before the interval
    admit(quota, QuotaLimits())  # an app without limits needs no store
    health = quota.health()
    assert (health.shared, health.available, health.outages, health.degraded_requests) == (
        True,
        False,
        1,
        5,
    )
    store.down = False
    with pytest.raises(EngineUnavailable):  # the interval has not passed: not tried yet
        admit(quota, limits)
    clock.now += 1.0
    admit(quota, limits)
    assert quota.health().available
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "error 2" in warnings[0].getMessage()
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_local_policy_splits_what_was_left(caplog: pytest.LogCaptureFixture) -> None:
    clock, store = Clock(), FlakyStore()
    quota = enforcer(clock, store=store, failure="local", processes=2)
    limits = QuotaLimits(rpm=10, total=1000)
    for _ in range(4):
        admit(quota, limits)
    asyncio.run(quota.restore_total(1, 999))  # the ledger says the app has 999 requests
    store.down = True
    caplog.set_level(logging.WARNING, logger="qfserve.access.quota")
    # Total: 1000 - 999 left, split in two rounds up to 1; then the total is spent.
    admit(quota, limits)
    assert type(refused(quota, limits)) is TotalLimit
    # Rpm alone: 10 - 4 left when Redis was last heard, this process's half is 3.
    rpm = QuotaLimits(rpm=10)
    for _ in range(3 - 1):  # the request above took one of the three
        admit(quota, rpm)
    assert type(refused(quota, rpm)) is RpmLimit
    assert len(caplog.records) == 1 and "1/2" in caplog.records[0].getMessage()
    assert quota.health().outages == 1 and not quota.health().available


def test_a_local_ticket_settles_locally() -> None:
    clock, store = Clock(), FlakyStore()
    quota = enforcer(clock, store=store, failure="local")
    limits = QuotaLimits(tpm=100)
    store.down = True
    ticket = admit(quota, limits, 100)
    assert ticket.local
    asyncio.run(quota.settle(ticket, 10))
    admit(quota, limits, 90)
    assert type(refused(quota, limits, 1)) is TpmLimit


def test_policy_and_processes_are_checked() -> None:
    with pytest.raises(ValueError):
        QuotaEnforcer(failure="open")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        QuotaEnforcer(processes=0)
