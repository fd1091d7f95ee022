"""The usage ledger's writer, on a real SQLite file (and PostgreSQL where it matters): rows
recorded on the request path reach the database in batches, a close writes what is left, a full
ledger drops and counts, one row the database refuses loses only itself, client strings are
stored clipped to their columns, and a waited-for row is committed at once, shared by whoever
waits at the same time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, event, select

from qfserve.access.apps import AppRegistry
from qfserve.access.usage import UsageLedger, UsageRecord
from qfserve.store.database import Database
from qfserve.store.schema import UsageRow
from tests.pg_server import running_postgres
from tests.servers import free_port
from tests.waiting import wait_until


def _database(url: str) -> tuple[Database, int]:
    database = Database(url)
    database.upgrade()
    return database, AppRegistry(database).create("ledger").app.app_id


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[tuple[Database, int]]:
    database, app_id = _database(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield database, app_id
    database.close()


def _row(app_id: int, n: int, **changes: object) -> UsageRecord:
    fields: dict[str, object] = {
        "request_id": f"r{n}",
        "app_id": app_id,
        "endpoint": "llama_2_7b",
        "user_id": None,
        "prompt_tokens": 10,
        "completion_tokens": n,
        "latency_ms": 5,
        "error_code": 0,
    }
    fields.update(changes)
    return UsageRecord(**fields)  # type: ignore[arg-type]


def _stored(database: Database) -> dict[str, str | None]:
    """user_id by request_id, of every stored row."""
    with database.engine.connect() as connection:
        rows = connection.execute(select(UsageRow.request_id, UsageRow.user_id)).all()
    return {request_id: user_id for request_id, user_id in rows}


def test_rows_are_written_off_the_request_path_and_close_writes_the_rest(
    sqlite: tuple[Database, int],
) -> None:
    database, app_id = sqlite
    ledger = UsageLedger(database, batch_size=7, linger_seconds=0.05)
    ledger.start()
    for n in range(20):
        ledger.record(_row(app_id, n))
    summary = wait_until(
        lambda: [s for s in ledger.summarize(by="app") if s.requests >= 20],
        timeout=5,
        interval=0.02,
        what="the writer's rows",
    )
    assert summary[0].completion_tokens == sum(range(20))

    slow = UsageLedger(database, linger_seconds=3600.0)
    slow.start()
    for n in range(20, 25):
        slow.record(_row(app_id, n))
    slow.close()  # at once, not after an hour, and with every row written
    ledger.close()
    assert ledger.summarize(by="app")[0].requests == 25


def test_a_full_ledger_drops_and_counts(sqlite: tuple[Database, int]) -> None:
    database, app_id = sqlite
    ledger = UsageLedger(database, max_pending=3)  # not started: nothing is taken
    for n in range(5):
        ledger.record(_row(app_id, n))
    assert ledger.dropped == 2
    ledger.start()
    ledger.close()
    assert ledger.summarize(by="app")[0].requests == 3


def _one_refused_row_among_ordinary_ones(database: Database, app_id: int) -> None:
    ledger = UsageLedger(database, linger_seconds=3600.0)
    # Gathered before the start: the writer takes them as one batch.
    for n in range(5):
        ledger.record(_row(app_id, n))
    # An integer no column of either database holds: refused whatever the strings.
    ledger.record(_row(app_id, 99, prompt_tokens=2**70))
    for n in range(5, 10):
        ledger.record(_row(app_id, n))
    ledger.start()
    ledger.close()
    assert sorted(_stored(database)) == sorted(f"r{n}" for n in range(10))
    assert ledger.dropped == 1


def _client_strings_are_stored_clipped(database: Database, app_id: int) -> None:
    ledger = UsageLedger(database, linger_seconds=3600.0)
    ledger.record(_row(app_id, 0))
    ledger.record(_row(app_id, 1, user_id="u" * 300))
    ledger.record(_row(app_id, 2, user_id="é" * (1 << 20)))  # 1 MiB of characters
    ledger.record(_row(app_id, 3, user_id="a\ud800b\x00c"))  # a lone surrogate, a NUL
    ledger.record(_row(app_id, 4, endpoint="m" * 1000))  # an OpenAI client's model name
    ledger.record(_row(app_id, 5, user_id="ordinary"))
    ledger.start()
    ledger.close()
    stored = _stored(database)
    assert stored == {
        "r0": None,
        "r1": "u" * 256,
        "r2": "é" * 256,
        "r3": "a?bc",
        "r4": None,
        "r5": "ordinary",
    }
    assert ledger.dropped == 0
    with database.engine.connect() as connection:
        endpoints = connection.execute(select(UsageRow.endpoint)).scalars().all()
    assert "m" * 128 in endpoints


def test_sqlite_one_refused_row_loses_only_itself(sqlite: tuple[Database, int]) -> None:
    _one_refused_row_among_ordinary_ones(*sqlite)


def test_sqlite_stores_client_strings_clipped(sqlite: tuple[Database, int]) -> None:
    _client_strings_are_stored_clipped(*sqlite)


@pytest.mark.postgres
def test_postgres_one_bad_row_loses_only_itself_and_strings_are_clipped() -> None:
    with running_postgres() as url:
        database, app_id = _database(url)
        _one_refused_row_among_ordinary_ones(database, app_id)
        with database.engine.begin() as connection:
            connection.execute(delete(UsageRow))
        _client_strings_are_stored_clipped(database, app_id)
        database.close()


def test_a_waited_for_row_is_committed_at_once_and_waiters_share_commits(
    sqlite: tuple[Database, int],
) -> None:
    database, app_id = sqlite
    commits: list[float] = []
    event.listen(database.engine, "commit", lambda _connection: commits.append(time.monotonic()))
    # An hour's linger: only a waiter can make the writer write before the close.
    ledger = UsageLedger(database, linger_seconds=3600.0)
    ledger.start()

    async def requests() -> list[bool]:
        one = ledger.record_awaited(_row(app_id, 0))
        assert await ledger.committed(one)
        assert _stored(database) == {"r0": None}
        ledger.record(_row(app_id, 1))  # nobody waits: it may ride along with the next commit
        waited = [ledger.record_awaited(_row(app_id, n)) for n in range(2, 42)]
        return list(await asyncio.gather(*(ledger.committed(w) for w in waited)))

    started = time.monotonic()
    assert all(asyncio.run(requests()))
    assert time.monotonic() - started < 5
    assert len(_stored(database)) >= 41
    # Forty rows recorded together: committed in a handful of transactions, not forty.
    assert len(commits) <= 6
    ledger.close()
    assert len(_stored(database)) == 42


def test_the_wait_for_a_commit_is_bounded_when_the_database_is_down() -> None:
    database = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    ledger = UsageLedger(database, commit_wait_seconds=0.5)
    ledger.start()

    async def request() -> bool:
        return await ledger.committed(ledger.record_awaited(_row(1, 0)))

    started = time.monotonic()
    assert asyncio.run(request()) is False
    assert time.monotonic() - started < 2
    ledger.close()  # gives up on the row after its retries
    assert ledger.dropped == 1
    database.close()
