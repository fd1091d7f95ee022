"""The usage ledger: one row per chat request, written off the request path by one writer thread.

`record` only appends the row to a bounded deque. Rows nobody waits for are gathered: the first
after a write wakes the writer, which waits `linger_seconds` for others to join it, then inserts
what has gathered in batches. A write per request held the interpreter lock in stretches the next
request waited behind, and waking the writer per row (a queue's notify) cost a thread switch per
request; an idle server's writer sleeps.

Usage is billing data, so a request's answer waits for its row: `record_awaited` hands back a
future the writer resolves once the row's transaction has committed, and a waited-for row ends
the writer's linger at once. The rows that gather while one transaction commits share the next:
concurrent requests share a commit (group commit). The wait is bounded (`commit_wait_seconds`),
so a database that is down delays an answer, never withholds it.

One row the database refuses never takes the others with it: a failed batch is written again row
by row, and only the refused row is dropped, loudly. Client strings are made storable first
(clipped to their column, no NUL, no lone surrogate). `close` writes every row left before it
returns. If the database stays unreachable the deque fills; past its bound new rows are dropped
and counted, loudly, rather than letting memory grow without end.

The request log (`request_log`, which the admin API searches and a background job prunes) gets
each row again, in the same transaction: no write of its own on the request path. Only there,
and only when `RequestLogOptions.record_text` is on, are the question and the answer kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, String, func, insert, select
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from qfserve.store.database import Database
from qfserve.store.schema import RequestLogRow, UsageRow

log = logging.getLogger(__name__)

GroupBy = Literal["day", "endpoint", "user", "app"]
GROUPINGS: tuple[GroupBy, ...] = ("day", "endpoint", "user", "app")
# Success, client gone mid-answer, engine overloaded, internal error: all after admission.
ADMITTED_CODES = (0, 499, 336100, 336000)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    request_id: str
    app_id: int
    endpoint: str
    user_id: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    error_code: int
    safety_category: str | None = None
    created_at: datetime | None = None
    # For the request log only, and only when it records text; never in the ledger.
    question: str | None = None
    answer: str | None = None


@dataclass(frozen=True, slots=True)
class RequestLogOptions:
    """Whether the writer also fills the request log (`request_log`), and with how much text."""

    enabled: bool = True
    record_text: bool = False
    max_text_chars: int = 4000


_TEXT_FIELDS = ("question", "answer")
_COLUMNS = tuple(f.name for f in fields(UsageRecord) if f.name not in _TEXT_FIELDS)
# A row, and the future of whoever waits for its commit.
_Pending = tuple[UsageRecord, asyncio.Future[bool] | None]


@dataclass(frozen=True, slots=True)
class UsageSummary:
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageLedger:
    def __init__(
        self,
        database: Database,
        *,
        max_pending: int = 100_000,
        batch_size: int = 500,
        # Half a second: each write is a commit, which empties the rows the token checks keep
        # (`Database.read_one`); at 0.1 s a quiet server's next request nearly always found them
        # gone, 0.4 ms more to its first token.
        linger_seconds: float = 0.5,
        commit_wait_seconds: float = 5.0,
        request_log: RequestLogOptions | None = None,
    ) -> None:
        self._db = database
        self._request_log = request_log or RequestLogOptions(enabled=False)
        self._linger = linger_seconds
        self._commit_wait = commit_wait_seconds
        # deque's append and popleft are atomic: the event loop appends, the writer takes.
        self._pending: deque[_Pending] = deque()
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._dropped = 0
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set by the first row after a write, and by close
        self._hurry = threading.Event()  # ends the linger: someone waits, or close
        self._writer: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def records_text(self) -> bool:
        """Whether rows should carry the question and answer (the request log keeps them)."""
        return self._request_log.enabled and self._request_log.record_text

    def start(self) -> None:
        self._stopping.clear()
        self._wake.set()  # rows recorded before the start
        self._writer = threading.Thread(target=self._write_loop, name="usage-ledger", daemon=True)
        self._writer.start()

    def record(self, row: UsageRecord) -> None:
        """Never blocks; the row is written with the next batch, nobody waits for it."""
        if self._append(row, None) and len(self._pending) == 1:
            self._wake.set()

    def record_awaited(self, row: UsageRecord) -> asyncio.Future[bool]:
        """Never blocks; the future (of the running event loop) becomes True once the row's
        transaction has committed, False if the row was dropped. Await it with `committed`."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if not self._append(row, future):
            future.set_result(False)
            return future
        self._hurry.set()
        self._wake.set()
        return future

    async def committed(self, future: asyncio.Future[bool]) -> bool:
        """Whether the row of `future` (from `record_awaited`) was committed, waiting at most
        `commit_wait_seconds`: an answer is delayed by a database in trouble, not withheld."""
        try:
            async with asyncio.timeout(self._commit_wait):
                return await future
        except TimeoutError:
            log.error("usage ledger: a row was not committed within %.1f s", self._commit_wait)
            return False

    def _append(self, row: UsageRecord, future: asyncio.Future[bool] | None) -> bool:
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.error("usage ledger is full: %d rows dropped so far", self._dropped)
            return False
        if row.created_at is None:
            row = replace(row, created_at=datetime.now(UTC))
        self._pending.append((row, future))
        return True

    def close(self) -> None:
        """Write every pending row, then stop the writer."""
        if self._writer is None:
            return
        self._stopping.set()
        self._hurry.set()
        self._wake.set()
        self._writer.join()
        self._writer = None

    def _write_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self._hurry.wait(self._linger)
            self._hurry.clear()
            # Read before the drain: a row recorded after `close` began is written too.
            stopping = self._stopping.is_set()
            while self._pending:
                batch = [
                    self._pending.popleft()
                    for _ in range(min(self._batch_size, len(self._pending)))
                ]
                self._write(batch)
            if stopping:
                return

    def _write(self, batch: list[_Pending]) -> None:
        """One transaction for the batch; if the database refuses it for what a row holds, each
        row on its own, so that only the refused row is lost. Never raises: the writer must
        outlive any row."""
        # Not dataclasses.asdict: it deep-copies every value, 16 us a row against under 1, all of
        # it holding the GIL the event loop is waiting for.
        rows = [_storable(record) for record, _ in batch]
        logged = self._logged(batch, rows) if self._request_log.enabled else []
        refusal: Exception | None = None
        for attempt in range(_ATTEMPTS):
            try:
                # Core, not the ORM: rows of plain values need no unit of work.
                with self._db.own_writes() as connection:
                    connection.execute(insert(UsageRow), rows)
                    if logged:
                        connection.execute(insert(RequestLogRow), logged)
            except Exception as error:
                if not _database_trouble(error):
                    refusal = error
                    break  # a row the database will not take, whenever asked: find it below
                log.warning(
                    "usage ledger: insert failed (attempt %d): %s", attempt + 1, _reason(error)
                )
                if attempt + 1 < _ATTEMPTS:
                    time.sleep(0.5 * (attempt + 1))
            else:
                _settle(batch, True)
                return
        else:
            self._dropped += len(batch)
            log.error("usage ledger: %d rows lost after retries", len(batch))
            _settle(batch, False)
            return
        if len(batch) > 1:
            for entry in batch:
                self._write([entry])
            return
        self._dropped += 1
        log.error(
            "usage ledger: the row of request %s was refused and dropped: %s",
            batch[0][0].request_id,
            _reason(refusal),
        )
        _settle(batch, False)

    def _logged(self, batch: list[_Pending], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The request log's rows: the ledger's, and the text when it is recorded."""
        if not self._request_log.record_text:
            return [{**row, "question": None, "answer": None} for row in rows]
        limit = self._request_log.max_text_chars
        return [
            {
                **row,
                "question": _text(record.question, limit) if record.question is not None else None,
                "answer": _text(record.answer, limit) if record.answer is not None else None,
            }
            for row, (record, _) in zip(rows, batch, strict=True)
        ]

    def admitted_counts(self) -> dict[int, int]:
        """Requests per app that passed the quotas (to restore total quotas at start-up): the
        codes a request can only end with after its admission."""
        query = (
            select(UsageRow.app_id, func.count())
            .where(UsageRow.error_code.in_(ADMITTED_CODES))
            .group_by(UsageRow.app_id)
        )
        with self._db.session() as session:
            return {int(app): int(count) for app, count in session.execute(query).all()}

    def summarize(
        self,
        *,
        app_id: int | None = None,
        since: datetime | None = None,
        by: GroupBy = "day",
        until: datetime | None = None,
    ) -> list[UsageSummary]:
        """Requests and tokens per group, oldest or smallest group first, of the rows created in
        [since, until)."""
        created = UsageRow.created_at
        groups: dict[str, ColumnElement[Any]] = {
            "day": func.date(created) if self._db.is_sqlite else func.date_trunc("day", created),
            "endpoint": UsageRow.endpoint.expression,
            "user": func.coalesce(UsageRow.user_id, ""),
            "app": UsageRow.app_id.expression,
        }
        group = groups[by]
        query = select(
            group.label("group"),
            func.count().label("requests"),
            func.coalesce(func.sum(UsageRow.prompt_tokens), 0),
            func.coalesce(func.sum(UsageRow.completion_tokens), 0),
        ).group_by(group)
        if app_id is not None:
            query = query.where(UsageRow.app_id == app_id)
        if since is not None:
            query = query.where(created >= since)
        if until is not None:
            query = query.where(created < until)
        with self._db.session() as session:
            rows = session.execute(query.order_by(group)).all()
        return [UsageSummary(_label(row[0]), int(row[1]), int(row[2]), int(row[3])) for row in rows]


_ATTEMPTS = 3
# The longest string each text column holds; what a client sent is clipped to it.
_LENGTHS = {
    column.name: column.type.length
    for column in UsageRow.__table__.columns
    if isinstance(column.type, String) and column.type.length
}
# The database, not a row, is in trouble: worth another try of the same rows.
_TROUBLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


def _storable(record: UsageRecord) -> dict[str, Any]:
    row = {name: getattr(record, name) for name in _COLUMNS}
    for name, length in _LENGTHS.items():
        value = row[name]
        # isascii is a flag read: the common row costs two comparisons per string.
        if isinstance(value, str) and not (len(value) <= length and value.isascii()):
            row[name] = _text(value, length)
            if row[name] != value:
                log.warning(
                    "usage ledger: request %s: %s clipped to what the column holds",
                    record.request_id,
                    name,
                )
    return row


def _text(value: str, length: int) -> str:
    """At most `length` characters every database stores: no NUL (PostgreSQL refuses it) and no
    lone surrogate (not encodable in UTF-8)."""
    clipped = value[:length].replace("\x00", "")
    return clipped.encode("utf-8", "replace").decode("utf-8")


def _database_trouble(error: Exception) -> bool:
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, _TROUBLE)


def _reason(error: Exception | None) -> str:
    """The error without the statement's parameters (a client's strings): the driver's message,
    first line."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[0][:200]}"


def _settle(batch: list[_Pending], committed: bool) -> None:
    """Resolves the waiting futures of `batch`, one wake-up of each event loop for all of them."""
    waiting: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]] = {}
    for _, future in batch:
        if future is not None:
            waiting.setdefault(future.get_loop(), []).append(future)
    for loop, futures in waiting.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, futures, committed)


def _resolve(futures: list[asyncio.Future[bool]], committed: bool) -> None:
    for future in futures:
        if not future.done():  # a wait that timed out cancelled its future
            future.set_result(committed)


def _label(value: object) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    return str(value)


def utc_instant(text: str) -> datetime:
    """A date (`YYYY-MM-DD`, midnight UTC) or an ISO time; one without an offset is UTC. Raises
    ValueError for anything else."""
    instant = datetime.fromisoformat(text)
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)
