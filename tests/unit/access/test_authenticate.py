from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from qfserve.access.apps import AppRegistry
from qfserve.access.attempts import (
    FailedAttempts,
    FixedWindowLimiter,
    MemoryCounters,
    Rate,
    TooManyFailedAttempts,
)
from qfserve.access.secrets import (
    DUMMY_SECRET_HASH,
    SecretCheckThreads,
    hash_secret,
    verify_secret,
)
from qfserve.errors import OAuthError
from qfserve.store.database import Database


class CountingVerify:
    """The verify seam: records the hashes it was asked to check."""

    def __init__(self) -> None:
        self.checked: list[str] = []

    def __call__(self, secret: str, stored: str) -> bool:
        self.checked.append(stored)
        return verify_secret(secret, stored)


@pytest.fixture
def database(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    database.upgrade()
    return database


def limited(per_client_id: int = 3, per_address: int = 100) -> FailedAttempts:
    return FailedAttempts(
        per_client_id=Rate(per_client_id, 60),
        per_address=Rate(per_address, 60),
        limiter=FixedWindowLimiter(MemoryCounters()),
    )


def test_the_dummy_hash_costs_what_a_real_one_does() -> None:
    real = hash_secret("secret").split("$")
    dummy = DUMMY_SECRET_HASH.split("$")
    assert dummy[:4] == real[:4]
    assert len(dummy[4]) == len(real[4]) and len(dummy[5]) == len(real[5])
    assert not verify_secret("", DUMMY_SECRET_HASH)


def test_unknown_client_id_runs_one_check_as_a_wrong_secret_does(database: Database) -> None:
    verify = CountingVerify()
    apps = AppRegistry(database, verify=verify)
    created = apps.create("a")
    with pytest.raises(OAuthError, match="Client authentication failed"):
        apps.authenticate(created.app.api_key, "wrong")
    assert len(verify.checked) == 1 and verify.checked[0] != DUMMY_SECRET_HASH
    with pytest.raises(OAuthError, match="unknown client id"):
        apps.authenticate("nobody", "wrong")
    assert verify.checked[1:] == [DUMMY_SECRET_HASH]
    apps.delete(created.app.app_id)
    with pytest.raises(OAuthError, match="unknown client id"):
        apps.authenticate(created.app.api_key, created.secret_key)
    assert verify.checked[2:] == [DUMMY_SECRET_HASH]


def test_failures_are_refused_without_a_check(database: Database) -> None:
    verify = CountingVerify()
    apps = AppRegistry(database, attempts=limited(per_client_id=3), verify=verify)
    created = apps.create("a")
    for _ in range(3):
        with pytest.raises(OAuthError, match="Client authentication failed"):
            apps.authenticate(created.app.api_key, "wrong", "10.0.0.1")
    with pytest.raises(TooManyFailedAttempts) as refused:
        apps.authenticate(created.app.api_key, created.secret_key, "10.0.0.2")
    assert refused.value.status == 429 and 0 < refused.value.retry_after <= 60
    with pytest.raises(TooManyFailedAttempts):
        apps.check_attempts(created.app.api_key, "10.0.0.3")
    assert len(verify.checked) == 3


def test_unknown_client_ids_count_per_address(database: Database) -> None:
    verify = CountingVerify()
    apps = AppRegistry(database, attempts=limited(per_address=2), verify=verify)
    created = apps.create("a")
    for n in range(2):
        with pytest.raises(OAuthError, match="unknown client id"):
            apps.authenticate(f"guess-{n}", "x", "10.0.0.1")
    with pytest.raises(TooManyFailedAttempts):
        apps.authenticate(created.app.api_key, created.secret_key, "10.0.0.1")
    assert apps.authenticate(created.app.api_key, created.secret_key, "10.0.0.2").name == "a"
    assert len(verify.checked) == 3


def test_successful_logins_are_not_counted(database: Database) -> None:
    apps = AppRegistry(database, attempts=limited(per_client_id=1, per_address=1))
    created = apps.create("a")
    for _ in range(5):
        assert apps.authenticate(created.app.api_key, created.secret_key, "10.0.0.1").name == "a"


def test_secret_checks_run_at_most_n_at_once() -> None:
    checks = SecretCheckThreads(2)
    release = threading.Event()
    lock = threading.Lock()
    running: list[int] = []
    most = 0

    def check(n: int) -> int:
        nonlocal most
        with lock:
            running.append(n)
            most = max(most, len(running))
        release.wait(10)
        with lock:
            running.remove(n)
        return n

    async def burst() -> list[int]:
        gathered = asyncio.gather(*(checks.run(check, n) for n in range(10)))
        deadline = time.monotonic() + 10
        while len(running) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(running) == 2
        release.set()
        return list(await gathered)

    try:
        assert asyncio.run(burst()) == list(range(10))
        assert most == 2
    finally:
        release.set()
        checks.close()


def test_memory_is_released_once_the_queue_is_empty() -> None:
    go = threading.Event()
    released = threading.Event()
    releases: list[str] = []

    def release_memory() -> None:
        releases.append(threading.current_thread().name)
        released.set()

    def check(n: int) -> int:
        go.wait(10)
        return n

    checks = SecretCheckThreads(2, release_memory=release_memory)

    async def burst() -> list[int]:
        gathered = asyncio.gather(*(checks.run(check, n) for n in range(10)))
        await asyncio.sleep(0)
        assert not releases
        go.set()
        return list(await gathered)

    try:
        assert asyncio.run(burst()) == list(range(10))
        assert released.wait(10)
        assert len(releases) == 1 and releases[0].startswith("secret-check")
    finally:
        go.set()
        checks.close()
