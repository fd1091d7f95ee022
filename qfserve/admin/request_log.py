"""The request log: searching it, and keeping it within its retention period and size budget.

The usage ledger's writer fills it (`qfserve.access.usage`). Pruning deletes in batches of
`batch_rows`, each its own short transaction, oldest first: a table of millions of rows is never
locked by one huge delete, and the chat path's inserts go on between the batches.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from qfserve.admin.audit import Page
from qfserve.admin.times import aware
from qfserve.config import Settings
from qfserve.store.database import Database
from qfserve.store.schema import RequestLogRow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: int
    request_id: str
    created_at: datetime
    app_id: int
    endpoint: str
    user_id: str | None
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    safety_category: str | None
    question: str | None
    answer: str | None


@dataclass(frozen=True, slots=True)
class LogFilter:
    app_id: int | None = None
    user_id: str | None = None
    endpoint: str | None = None
    # "ok" (code 0), "error" (any other code), or one code.
    status: str | int | None = None
    since: datetime | None = None
    until: datetime | None = None


class RequestLog:
    """Blocking database calls: the server runs them in a worker thread."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def search(self, where: LogFilter, *, before_id: int | None = None, limit: int = 50) -> Page:
        """Matching rows, newest first."""
        row = RequestLogRow
        conditions: list[ColumnElement[bool]] = []
        if where.app_id is not None:
            conditions.append(row.app_id == where.app_id)
        if where.user_id is not None:
            conditions.append(row.user_id == where.user_id)
        if where.endpoint is not None:
            conditions.append(row.endpoint == where.endpoint)
        if where.status == "ok":
            conditions.append(row.error_code == 0)
        elif where.status == "error":
            conditions.append(row.error_code != 0)
        elif isinstance(where.status, int):
            conditions.append(row.error_code == where.status)
        if where.since is not None:
            conditions.append(row.created_at >= where.since)
        if where.until is not None:
            conditions.append(row.created_at < where.until)
        if before_id is not None:
            conditions.append(row.id < before_id)
        query = select(row).where(*conditions).order_by(row.id.desc()).limit(limit + 1)
        with self._db.session() as session:
            found = session.scalars(query).all()
            rows = [
                LogEntry(
                    r.id,
                    r.request_id,
                    aware(r.created_at),
                    r.app_id,
                    r.endpoint,
                    r.user_id,
                    r.error_code,
                    r.prompt_tokens,
                    r.completion_tokens,
                    r.latency_ms,
                    r.safety_category,
                    r.question,
                    r.answer,
                )
                for r in found[:limit]
            ]
        return Page(rows, rows[-1].id if len(found) > limit else None)

    def count(self) -> int:
        with self._db.session() as session:
            return int(session.scalar(select(func.count()).select_from(RequestLogRow)) or 0)


@dataclass(frozen=True, slots=True)
class Pruned:
    by_age: int
    by_size: int


class RequestLogPruner:
    """Deletes rows older than `retention` and, past `max_rows`, the oldest rows (by id), in
    batches. A retention of None or a max_rows of 0: no such limit."""

    def __init__(
        self,
        database: Database,
        *,
        retention: timedelta | None,
        max_rows: int,
        batch_rows: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = database
        self._retention = retention
        self._max_rows = max_rows
        self._batch = batch_rows
        self._clock = clock
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Ask a prune running in another thread to end after its current batch."""
        self._stopping.set()

    def prune(self) -> Pruned:
        by_age = 0
        if self._retention is not None:
            cutoff = self._clock() - self._retention
            by_age = self._delete_batches(RequestLogRow.created_at < cutoff)
        by_size = 0
        if self._max_rows > 0:
            newest_dropped = self._newest_over_budget()
            if newest_dropped is not None:
                by_size = self._delete_batches(RequestLogRow.id <= newest_dropped)
        return Pruned(by_age, by_size)

    def _newest_over_budget(self) -> int | None:
        """The id of the newest row beyond the `max_rows` newest, if there are more."""
        with self._db.session() as session:
            return session.scalar(
                select(RequestLogRow.id)
                .order_by(RequestLogRow.id.desc())
                .offset(self._max_rows)
                .limit(1)
            )

    def _delete_batches(self, condition: ColumnElement[bool]) -> int:
        deleted = 0
        while True:
            # Ids first, then a delete by id: both databases take it, and each statement
            # touches at most one batch.
            with self._db.own_writes() as connection:
                ids = list(
                    connection.scalars(
                        select(RequestLogRow.id)
                        .where(condition)
                        .order_by(RequestLogRow.id)
                        .limit(self._batch)
                    )
                )
                if ids:
                    connection.execute(delete(RequestLogRow).where(RequestLogRow.id.in_(ids)))
            deleted += len(ids)
            if len(ids) < self._batch or self._stopping.is_set():
                return deleted


def pruner_for(settings: Settings, database: Database) -> RequestLogPruner:
    logged = settings.request_log
    return RequestLogPruner(
        database,
        retention=timedelta(days=logged.retention_days) if logged.retention_days else None,
        max_rows=logged.max_rows,
        batch_rows=logged.prune_batch_rows,
    )


async def keep_pruned(pruner: RequestLogPruner, every_seconds: float) -> None:
    """The server's background job: prune now, then every `every_seconds`, until cancelled.
    A database in trouble is logged and tried again next time."""
    while True:
        running = asyncio.ensure_future(anyio.to_thread.run_sync(pruner.prune))
        try:
            pruned = await asyncio.shield(running)
        except asyncio.CancelledError:
            # The server closes the database once this job is cancelled and awaited: a prune
            # still running in its thread would use it closed.
            pruner.stop()
            await asyncio.wait([running])
            raise
        except SQLAlchemyError as exc:
            log.warning("request log: pruning failed, trying again later: %s", type(exc).__name__)
        except Exception as exc:  # a bug: logged, and the job lives on
            log.error("request log: pruning failed", exc_info=exc)
        else:
            if pruned.by_age or pruned.by_size:
                log.info(
                    "request log: %d rows past retention and %d over the size budget deleted",
                    pruned.by_age,
                    pruned.by_size,
                )
        await asyncio.sleep(every_seconds)
