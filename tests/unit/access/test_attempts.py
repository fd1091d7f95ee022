from __future__ import annotations

import pytest

from qfserve.access.attempts import (
    FailedAttempts,
    FixedWindowLimiter,
    MemoryCounters,
    Rate,
    TooManyFailedAttempts,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempts(clock: Clock, *, per_client_id: int = 3, per_address: int = 5) -> FailedAttempts:
    limiter = FixedWindowLimiter(MemoryCounters(clock=clock))
    return FailedAttempts(
        per_client_id=Rate(per_client_id, 60),
        per_address=Rate(per_address, 60),
        limiter=limiter,
    )


def test_counters_expire_with_their_window() -> None:
    clock = Clock()
    counters = MemoryCounters(clock=clock)
    assert counters.incr("k", 60) == 1
    clock.now += 30
    assert counters.incr("k", 60) == 2
    assert counters.expires_in("k") == 30
    clock.now += 30
    assert counters.get("k") == 0 and counters.expires_in("k") == 0
    assert counters.incr("k", 60, amount=3) == 3


def test_counters_keep_at_most_max_keys_dropping_the_oldest() -> None:
    clock = Clock()
    counters = MemoryCounters(max_keys=3, clock=clock)
    for key in "abcd":
        counters.incr(key, 60)
        clock.now += 1
    assert len(counters) == 3
    assert counters.get("a") == 0 and counters.get("d") == 1


def test_expired_counters_are_swept() -> None:
    clock = Clock()
    counters = MemoryCounters(clock=clock)
    for n in range(100):
        counters.incr(f"k{n}", 60)
    clock.now += 61
    counters.incr("new", 60)
    assert len(counters) == 1


def test_fixed_window_limiter_refuses_past_the_amount() -> None:
    clock = Clock()
    limiter = FixedWindowLimiter(MemoryCounters(clock=clock))
    rate = Rate(2, 10)
    assert limiter.test(rate, "k")
    limiter.hit(rate, "k")
    limiter.hit(rate, "k")
    assert not limiter.test(rate, "k")
    assert limiter.reset_in("k") == 10
    clock.now += 10
    assert limiter.test(rate, "k")


def test_an_amount_of_zero_is_no_limit() -> None:
    limiter = FixedWindowLimiter(MemoryCounters(clock=Clock()))
    for _ in range(100):
        limiter.hit(Rate(0, 60), "k")
    assert limiter.test(Rate(0, 60), "k")


def test_a_client_id_out_of_failures_is_refused_until_its_window_ends() -> None:
    clock = Clock()
    failed = attempts(clock)
    for n in range(3):
        failed.check("app", f"10.0.0.{n}")
        failed.failed("app", f"10.0.0.{n}")
        clock.now += 1
    with pytest.raises(TooManyFailedAttempts) as refused:
        failed.check("app", "10.0.0.99")
    assert refused.value.status == 429
    assert refused.value.error == "invalid_client"
    assert refused.value.retry_after == 57
    failed.check("other-app", "10.0.0.99")
    clock.now += 56.5
    with pytest.raises(TooManyFailedAttempts):
        failed.check("app", "10.0.0.99")
    clock.now += 0.5
    failed.check("app", "10.0.0.99")


def test_an_address_out_of_failures_is_refused_for_every_client_id() -> None:
    clock = Clock()
    failed = attempts(clock)
    for n in range(5):
        failed.failed(f"guess-{n}", "10.0.0.1")
    with pytest.raises(TooManyFailedAttempts):
        failed.check("never-tried", "10.0.0.1")
    failed.check("never-tried", "10.0.0.2")


def test_long_client_ids_are_kept_short() -> None:
    clock = Clock()
    counters = MemoryCounters(clock=clock)
    failed = FailedAttempts(
        per_client_id=Rate(1, 60),
        per_address=Rate(0, 60),
        limiter=FixedWindowLimiter(counters),
    )
    failed.failed("x" * 100_000, "10.0.0.1")
    with pytest.raises(TooManyFailedAttempts):
        failed.check("x" * 64 + "y", "10.0.0.2")
