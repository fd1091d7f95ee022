"""The request log's retention: rows past the retention period and, beyond the size budget, the
oldest rows are deleted in batches, and nothing else: not a newer row, not a usage ledger row.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from sqlalchemy import Engine, event, func, insert, select

from qfserve.admin.request_log import Pruned, RequestLogPruner, keep_pruned
from qfserve.store.database import Database
from qfserve.store.schema import RequestLogRow, UsageRow

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _fill(database: Database, ages_in_days: list[float]) -> list[int]:
    """One request log row (and one ledger row) per age, oldest first; their ids."""
    rows = [
        {
            "request_id": f"r{n}",
            "app_id": 1,
            "endpoint": "llama_2_7b",
            "user_id": None,
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "latency_ms": 1,
            "error_code": 0,
            "safety_category": None,
            "created_at": NOW - timedelta(days=age),
        }
        for n, age in enumerate(ages_in_days)
    ]
    with database.engine.begin() as connection:
        connection.execute(insert(UsageRow), rows)
        connection.execute(
            insert(RequestLogRow), [{**r, "question": "q", "answer": "a"} for r in rows]
        )
    with database.engine.connect() as connection:
        return list(connection.scalars(select(RequestLogRow.id).order_by(RequestLogRow.id)))


def _left(database: Database) -> list[str]:
    with database.engine.connect() as connection:
        return list(connection.scalars(select(RequestLogRow.request_id).order_by(RequestLogRow.id)))


def _ledger_rows(database: Database) -> int:
    with database.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(UsageRow)) or 0)


@pytest.fixture
def deletes() -> Iterator[list[str]]:
    """The DELETE statements sent on any engine (the pruner writes on the store's own
    connection for such writes, on a SQLite file), recorded as they go."""
    seen: list[str] = []

    def before(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", before)
    yield seen
    event.remove(Engine, "before_cursor_execute", before)


def test_rows_past_retention_go_in_batches_and_nothing_else(
    database: Database, deletes: list[str]
) -> None:
    # 7 rows older than 30 days (one just past it), 5 within (one just inside).
    ages = [90, 80, 70, 60, 50, 40, 30.001, 29.999, 20, 10, 1, 0]
    _fill(database, ages)
    deletes.clear()
    pruner = RequestLogPruner(
        database, retention=timedelta(days=30), max_rows=0, batch_rows=3, clock=lambda: NOW
    )
    pruned = pruner.prune()
    assert (pruned.by_age, pruned.by_size) == (7, 0)
    assert _left(database) == [f"r{n}" for n in range(7, 12)]
    assert len(deletes) == 3  # 3 + 3 + 1: never one big delete
    assert _ledger_rows(database) == len(ages)
    assert pruner.prune().by_age == 0


def test_a_stopped_pruner_ends_after_one_batch(database: Database, deletes: list[str]) -> None:
    _fill(database, [90, 80, 70, 60, 50, 40, 1])
    deletes.clear()
    pruner = RequestLogPruner(
        database, retention=timedelta(days=30), max_rows=0, batch_rows=2, clock=lambda: NOW
    )
    pruner.stop()
    assert pruner.prune().by_age == 2
    assert len(deletes) == 1


def test_the_size_budget_keeps_the_newest_rows(database: Database) -> None:
    ages = [float(age) for age in range(20, 0, -1)]  # 20 rows, oldest first
    _fill(database, ages)
    pruner = RequestLogPruner(database, retention=None, max_rows=8, batch_rows=5, clock=lambda: NOW)
    pruned = pruner.prune()
    assert (pruned.by_age, pruned.by_size) == (0, 12)
    assert _left(database) == [f"r{n}" for n in range(12, 20)]
    assert _ledger_rows(database) == 20
    assert pruner.prune().by_size == 0


def test_both_limits_together(database: Database) -> None:
    _fill(database, [100, 50, 5, 4, 3, 2, 1])
    pruner = RequestLogPruner(
        database, retention=timedelta(days=30), max_rows=3, batch_rows=2, clock=lambda: NOW
    )
    pruned = pruner.prune()
    assert (pruned.by_age, pruned.by_size) == (2, 2)
    assert _left(database) == ["r4", "r5", "r6"]


def test_no_limits_deletes_nothing(database: Database) -> None:
    _fill(database, [1000, 1])
    pruner = RequestLogPruner(database, retention=None, max_rows=0, batch_rows=2)
    assert pruner.prune().by_age == 0
    assert _left(database) == ["r0", "r1"]


class _BlockedPruner:
    """A pruner whose prune waits, in its worker thread, until released."""

    def __init__(self) -> None:
        self.started, self.release, self.returned = (threading.Event() for _ in range(3))

    def stop(self) -> None:
        pass

    def prune(self) -> Pruned:
        self.started.set()
        self.release.wait(timeout=30)
        self.returned.set()
        return Pruned(0, 0)


def test_a_cancelled_pruning_job_ends_after_the_prune_in_its_thread() -> None:
    """The server cancels and awaits the job before closing the database: awaiting must not
    return while a prune still runs in its thread, which would then use a closed database."""

    async def scenario(pruner: _BlockedPruner) -> None:
        job = asyncio.create_task(keep_pruned(cast(RequestLogPruner, pruner), 3600))
        while not pruner.started.is_set():
            await asyncio.sleep(0.01)
        job.cancel()
        threading.Timer(0.2, pruner.release.set).start()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        assert pruner.returned.is_set()

    asyncio.run(scenario(_BlockedPruner()))
