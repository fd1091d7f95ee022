"""The quota algorithms through a real redis-server: boundaries, processes, outages."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from qfserve.access.quota import QuotaEnforcer, QuotaLimits, Window
from qfserve.access.quota.redis_store import EXPIRY_GRACE_SECONDS, RedisQuotaStore
from qfserve.errors import (
    DailyLimit,
    EngineUnavailable,
    QpsLimit,
    QuotaExceeded,
    RpmLimit,
    TotalLimit,
    TpmLimit,
)
from tests.redis_server import RedisServer, running_redis

pytestmark = pytest.mark.redis

MIDNIGHT = 1_699_920_000.0  # 2023-11-14T00:00:00Z: a second, minute and UTC day all start here
MINUTE, DAY = 60.0, 86_400.0
_apps = count(1)


class Clock:
    def __init__(self, now: float = MIDNIGHT) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, for the tests that kill it."""
    with running_redis(tmp_path) as server:
        yield server


@asynccontextmanager
async def enforcer(url: str, clock: Clock, **kwargs: Any) -> AsyncIterator[QuotaEnforcer]:
    quota = QuotaEnforcer.from_url(url, clock=clock, **kwargs)
    try:
        yield quota
    finally:
        await quota.close()


async def refused(quota: QuotaEnforcer, app: int, limits: QuotaLimits, tokens: int = 0) -> int:
    with pytest.raises(QuotaExceeded) as caught:
        await quota.admit(app, limits, tokens)
    return caught.value.code


@pytest.mark.parametrize(
    ("limits", "tokens", "error", "last_moment", "next_window"),
    [
        (QuotaLimits(qps=3), 0, QpsLimit, 0.999, 1.0),
        (QuotaLimits(rpm=3), 0, RpmLimit, MINUTE - 0.001, MINUTE),
        (QuotaLimits(tpm=30), 10, TpmLimit, MINUTE - 0.001, MINUTE),
        (QuotaLimits(daily=3), 0, DailyLimit, DAY - 0.001, DAY),
        (QuotaLimits(total=3), 0, TotalLimit, 10 * 365 * DAY, None),
    ],
)
def test_each_window_admits_exactly_its_limit(
    redis_server: RedisServer,
    limits: QuotaLimits,
    tokens: int,
    error: type[QuotaExceeded],
    last_moment: float,
    next_window: float | None,
) -> None:
    async def scenario() -> None:
        clock, app = Clock(), next(_apps)
        async with enforcer(redis_server.url, clock) as quota:
            for _ in range(3):
                await quota.admit(app, limits, tokens)
            clock.now = MIDNIGHT + last_moment
            assert await refused(quota, app, limits, tokens) == error.code
            if next_window is not None:
                clock.now = MIDNIGHT + next_window
                for _ in range(3):
                    await quota.admit(app, limits, tokens)
                assert await refused(quota, app, limits, tokens) == error.code

    asyncio.run(scenario())


def test_all_or_nothing_and_the_order_of_errors(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        clock, app = Clock(), next(_apps)
        async with enforcer(redis_server.url, clock) as quota:
            limits = QuotaLimits(qps=2, rpm=2, daily=3)
            await quota.admit(app, limits, 0)
            await quota.admit(app, limits, 0)
            clock.now += 1
            for _ in range(5):
                assert await refused(quota, app, limits) == RpmLimit.code
            clock.now += MINUTE
            await quota.admit(app, limits, 0)  # refusals consumed neither qps nor daily
            assert await refused(quota, app, limits) == DailyLimit.code

            every, other = QuotaLimits(qps=1, rpm=1, tpm=1, daily=1, total=1), next(_apps)
            await quota.admit(other, every, 1)
            codes = [
                await refused(quota, other, limits, 1)
                for limits in (
                    every,
                    QuotaLimits(qps=1, rpm=1, tpm=1, daily=1),
                    QuotaLimits(qps=1, rpm=1, tpm=1),
                    QuotaLimits(rpm=1, tpm=1),
                    QuotaLimits(tpm=1),
                )
            ]
            assert codes == [19, 17, 18, 336501, 336502]

    asyncio.run(scenario())


def test_settlement_and_headers(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        clock, app = Clock(), next(_apps)
        async with enforcer(redis_server.url, clock) as quota:
            limits = QuotaLimits(rpm=10, tpm=100)
            ticket = await quota.admit(app, limits, 80)
            assert ticket.headers() == {
                "X-Ratelimit-Limit-Requests": "10",
                "X-Ratelimit-Limit-Tokens": "100",
                "X-Ratelimit-Remaining-Requests": "9",
                "X-Ratelimit-Remaining-Tokens": "20",
            }
            await quota.settle(ticket, 30)
            await quota.settle(ticket, 0)  # settled already: no effect
            await quota.admit(app, limits, 70)
            assert await refused(quota, app, limits, 1) == TpmLimit.code
            # Rolled over: the old minute is not refunded (and the new one not touched).
            other = next(_apps)
            late = await quota.admit(other, limits, 100)
            clock.now += MINUTE
            await quota.settle(late, 0)
            clock.now -= MINUTE
            assert await refused(quota, other, limits, 1) == TpmLimit.code

    asyncio.run(scenario())


def test_counters_are_namespaced_and_expire(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        clock, app = Clock(MIDNIGHT + 30.5), next(_apps)
        async with enforcer(redis_server.url, clock) as quota:
            await quota.admit(app, QuotaLimits(qps=5, rpm=5, tpm=50, daily=5, total=5), 7)
        client = Redis.from_url(redis_server.url, decode_responses=True)
        try:
            keys = sorted(str(key) for key in await client.keys(f"qfserve:quota:{{{app}}}:*"))
            starts = {"total": 0, "daily": MIDNIGHT, "qps": MIDNIGHT + 30}
            starts |= {"rpm": MIDNIGHT, "tpm": MIDNIGHT}
            assert keys == sorted(
                f"qfserve:quota:{{{app}}}:{window}:{int(start)}" for window, start in starts.items()
            )
            ttls = {key.split(":")[3]: await client.ttl(key) for key in keys}
            assert ttls["total"] == -1  # never expires
            assert 0 < ttls["qps"] <= 1 + EXPIRY_GRACE_SECONDS
            assert 0 < ttls["rpm"] <= 30 + EXPIRY_GRACE_SECONDS
            assert DAY - 31 < ttls["daily"] <= DAY - 30 + EXPIRY_GRACE_SECONDS
            tpm_key = f"qfserve:quota:{{{app}}}:tpm:{int(MIDNIGHT)}"
            assert await client.get(tpm_key) == "7"
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_scripts_are_loaded_again_after_a_flush(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        clock, app = Clock(), next(_apps)
        async with enforcer(redis_server.url, clock) as quota:
            assert await quota.prepare()
            await quota.admit(app, QuotaLimits(rpm=2), 0)
            client = Redis.from_url(redis_server.url)
            try:
                await client.script_flush()
            finally:
                await client.aclose()
            await quota.admit(app, QuotaLimits(rpm=2), 0)
            assert await refused(quota, app, QuotaLimits(rpm=2)) == RpmLimit.code
            assert quota.health().outages == 0

    asyncio.run(scenario())


# One gateway process: waits for the agreed moment, then fires its admissions all at once.
_WORKER = """
import asyncio, json, sys, time
from qfserve.access.quota import QuotaEnforcer, QuotaLimits
from qfserve.errors import QuotaExceeded

url, app, start_at, fired, now, limits, tokens = sys.argv[1:]

async def main():
    quota = QuotaEnforcer.from_url(url, clock=lambda: float(now))
    assert await quota.prepare()
    await asyncio.sleep(max(0.0, float(start_at) - time.time()))

    async def one():
        try:
            await quota.admit(app, QuotaLimits(**json.loads(limits)), int(tokens))
        except QuotaExceeded as exc:
            return exc.code
        return 0

    codes = await asyncio.gather(*(one() for _ in range(int(fired))))
    await quota.close()
    print(json.dumps(codes))

asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("limits", "tokens", "code"),
    [({"rpm": 50}, 0, RpmLimit.code), ({"tpm": 500, "qps": 1000}, 10, TpmLimit.code)],
)
def test_two_processes_admit_exactly_the_limit_together(
    redis_server: RedisServer, limits: dict[str, int], tokens: int, code: int
) -> None:
    app, start_at, now = str(next(_apps)), time.time() + 3, time.time()
    args = [redis_server.url, app, str(start_at), "40", str(now), json.dumps(limits), str(tokens)]
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, *args], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    codes = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        codes += json.loads(out)
    assert len(codes) == 80
    assert codes.count(0) == 50 and codes.count(code) == 30


def test_reject_policy_when_redis_dies_and_recovery(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qfserve.access.quota")

    async def scenario() -> None:
        clock, limits = Clock(), QuotaLimits(rpm=100)
        async with enforcer(own_redis.url, clock, failure="reject", retry_seconds=1.0) as quota:
            await quota.admit(1, limits, 0)
            own_redis.stop()
            for _ in range(5):
                with pytest.raises(EngineUnavailable) as caught:
                    await quota.admit(1, limits, 0)
                assert caught.value.code == 2
            health = quota.health()
            assert not health.available and health.outages == 1
            assert health.degraded_requests == 5
            own_redis.start()
            clock.now += 1.0
            ticket = await quota.admit(1, limits, 0)
            assert not ticket.local and quota.health().available
            # Redis came back empty: the charge before the outage is gone with it.
            assert ticket.headers()["X-Ratelimit-Remaining-Requests"] == "99"

    asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "error 2" in warnings[0].getMessage()
    assert "reachable again" in caplog.records[-1].getMessage()


def test_local_policy_when_redis_dies_and_recovery(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="qfserve.access.quota")

    async def scenario() -> None:
        clock, limits = Clock(), QuotaLimits(rpm=10)
        async with enforcer(own_redis.url, clock, failure="local", processes=2) as quota:
            for _ in range(4):
                await quota.admit(1, limits, 0)
            own_redis.stop()
            # 10 - 4 were left when Redis last answered; this process's half is 3.
            tickets = [await quota.admit(1, limits, 0) for _ in range(3)]
            assert all(ticket.local for ticket in tickets)
            assert await refused(quota, 1, limits) == RpmLimit.code
            assert quota.health().outages == 1 and not quota.health().available
            own_redis.start()
            clock.now += 1.0
            ticket = await quota.admit(1, limits, 0)
            assert not ticket.local and quota.health().available

    asyncio.run(scenario())
    assert len(caplog.records) == 1 and "1/2" in caplog.records[0].getMessage()


def test_a_redis_that_hangs_times_out_into_the_policy(own_redis: RedisServer) -> None:
    assert own_redis.process is not None
    process = own_redis.process

    async def scenario() -> None:
        clock, limits = Clock(), QuotaLimits(rpm=100)
        kwargs = {"failure": "reject", "timeout_seconds": 0.2}
        async with enforcer(own_redis.url, clock, **kwargs) as quota:
            await quota.admit(1, limits, 0)
            process.send_signal(signal.SIGSTOP)  # connections stay open, answers never come
            try:
                started = time.monotonic()
                with pytest.raises(EngineUnavailable):
                    await quota.admit(1, limits, 0)
                assert time.monotonic() - started < 2
            finally:
                process.send_signal(signal.SIGCONT)
            clock.now += 1.0
            await quota.admit(1, limits, 0)
            assert quota.health().available and quota.health().outages == 1

    asyncio.run(scenario())


def test_an_unreachable_redis_at_start_is_reported(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # never started: nothing listens on its port

    async def scenario() -> None:
        async with enforcer(server.url, Clock(), failure="reject") as quota:
            assert not await quota.prepare()
            with pytest.raises(EngineUnavailable):
                await quota.admit(1, QuotaLimits(rpm=1), 0)
            await quota.admit(1, QuotaLimits(), 0)  # no limits: served all the same

    asyncio.run(scenario())


def test_store_keys_name_app_window_and_start() -> None:
    store = RedisQuotaStore(Redis())
    assert store.key("7", Window.RPM, 120) == "qfserve:quota:{7}:rpm:120"
