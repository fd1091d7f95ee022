"""Quotas through real servers: each error at its boundary over HTTP, with and without Redis, two
gateway processes sharing one Redis, and what happens when Redis goes away."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.pg_server import running_postgres
from tests.redis_server import RedisServer, running_redis
from tests.servers import Server, qfserve, running_server
from tests.waiting import wait_until

pytestmark = [pytest.mark.model, pytest.mark.redis]

HI = {"messages": [{"role": "user", "content": "Hi"}], "max_output_tokens": 2}
HEADERS = (
    "X-Ratelimit-Limit-Requests",
    "X-Ratelimit-Limit-Tokens",
    "X-Ratelimit-Remaining-Requests",
    "X-Ratelimit-Remaining-Tokens",
)


def chat(server: Server, token: str, **body: Any) -> requests.Response:
    return requests.post(server.chat_url(token), json={**HI, **body}, timeout=60)


def code(reply: requests.Response) -> int:
    return int(reply.json().get("error_code", 0))


def limited_app(server: Server, **limits: int) -> tuple[dict[str, str], str]:
    app = server.create_app("quota")
    flags = [part for name, value in limits.items() for part in (f"--{name}", str(value))]
    qfserve("app", "quota", str(app["app_id"]), *flags, env=server.env)
    return app, server.token(app)


def away_from_minute_end() -> None:
    """Fixed windows: start a per-minute test where the whole test fits in one minute."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres+redis", marks=pytest.mark.postgres)],
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, RedisServer | None]]:
    """Without Redis on SQLite (one process is exact alone), and with Redis on PostgreSQL."""
    with ExitStack() as stack:
        env: dict[str, str] = {}
        redis = None
        if request.param == "postgres+redis":
            env["QFSERVE_DATABASE_URL"] = stack.enter_context(running_postgres())
            redis = stack.enter_context(running_redis(tmp_path_factory.mktemp("redis")))
            env["QFSERVE_REDIS_URL"] = redis.url
        server = stack.enter_context(running_server(tmp_path_factory.mktemp("quota"), **env))
        yield server, redis


def test_total_and_daily_at_their_boundary(stack: tuple[Server, RedisServer | None]) -> None:
    server, _ = stack
    _, token = limited_app(server, total=3)
    assert [code(chat(server, token)) for _ in range(4)] == [0, 0, 0, 19]
    _, token = limited_app(server, daily=2)
    assert [code(chat(server, token)) for _ in range(3)] == [0, 0, 17]


def test_rpm_at_its_boundary_with_headers(stack: tuple[Server, RedisServer | None]) -> None:
    server, _ = stack
    away_from_minute_end()
    _, token = limited_app(server, rpm=3)
    replies = [chat(server, token) for _ in range(4)]
    assert [code(r) for r in replies] == [0, 0, 0, 336501]
    assert [r.headers["X-Ratelimit-Remaining-Requests"] for r in replies] == ["2", "1", "0", "0"]
    for reply in replies:
        assert all(reply.headers[h].isdigit() for h in HEADERS)
        assert reply.headers["X-Ratelimit-Limit-Requests"] == "3"
    stream = requests.post(
        server.chat_url(token), json={**HI, "stream": True}, stream=True, timeout=60
    )
    assert stream.headers["content-type"].startswith("application/json"), "refused before a stream"
    assert stream.json()["error_code"] == 336501


def test_qps_at_its_boundary(stack: tuple[Server, RedisServer | None]) -> None:
    server, _ = stack
    _, token = limited_app(server, qps=2)
    time.sleep(1 - time.time() % 1 + 0.02)  # all at the start of one second
    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(lambda _: code(chat(server, token)), range(4)))
    assert codes == [0, 0, 18, 18]


def test_tpm_reserves_then_settles(stack: tuple[Server, RedisServer | None]) -> None:
    server, _ = stack
    away_from_minute_end()
    probe = chat(server, server.token(server.create_app("probe"))).json()
    prompt = probe["usage"]["prompt_tokens"]
    # Room for exactly one reservation (prompt + max_output_tokens) in the minute.
    _, token = limited_app(server, tpm=prompt + 8)
    first = chat(server, token, max_output_tokens=8)
    assert code(first) == 0
    assert first.headers["X-Ratelimit-Limit-Tokens"] == str(prompt + 8)
    assert code(chat(server, token, max_output_tokens=8)) == 336502


@pytest.fixture
def redis_pair(tmp_path: Path) -> Iterator[tuple[Server, Server, RedisServer]]:
    """Two gateway processes sharing one store and one Redis."""
    with ExitStack() as stack:
        (tmp_path / "redis").mkdir()
        redis = stack.enter_context(running_redis(tmp_path / "redis"))
        env = {
            "QFSERVE_REDIS_URL": redis.url,
            "QFSERVE_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
            "QFSERVE_MASTER_KEY": "5a" * 32,
        }
        one = stack.enter_context(running_server(tmp_path / "one", **env))
        two = stack.enter_context(running_server(tmp_path / "two", **env))
        yield one, two, redis


@pytest.mark.slow
def test_two_gateways_sharing_redis_admit_exactly_n(
    redis_pair: tuple[Server, Server, RedisServer],
) -> None:
    one, two, _ = redis_pair
    away_from_minute_end()
    _, token = limited_app(one, rpm=5)
    targets = [one, two] * 5  # 10 requests at once for a limit of 5
    with ThreadPoolExecutor(len(targets)) as pool:
        codes = list(pool.map(lambda server: code(chat(server, token)), targets))
    assert sorted(codes) == [0] * 5 + [336501] * 5


@pytest.mark.slow
def test_redis_down_is_refused_with_2_then_recovers(
    redis_pair: tuple[Server, Server, RedisServer],
) -> None:
    one, _, redis = redis_pair
    away_from_minute_end()
    _, token = limited_app(one, rpm=100)
    assert code(chat(one, token)) == 0
    redis.stop()
    assert code(chat(one, token)) == 2  # the default policy: reject, loudly
    metrics = requests.get(f"{one.url}/metrics", timeout=10).text
    assert "qfserve_quota_store_up 0.0" in metrics
    assert "quota store" in one.log().lower() or "redis" in one.log().lower()
    redis.start()
    wait_until(
        lambda: code(chat(one, token)) == 0,
        timeout=15,
        interval=0.5,
        what="recovery after Redis came back",
    )


def test_usage_shows_quota_refusals(stack: tuple[Server, RedisServer | None]) -> None:
    server, _ = stack
    app, token = limited_app(server, total=1)
    chat(server, token)
    chat(server, token)

    def requests_in_ledger() -> int:
        rows = json.loads(
            qfserve("usage", "--app", str(app["app_id"]), "--json", env=server.env).stdout
        )
        return sum(int(r["requests"]) for r in rows)

    # The ledger writes off the request path.
    wait_until(lambda: requests_in_ledger() >= 2, interval=0.2, what="both requests in the ledger")
    assert requests_in_ledger() == 2
