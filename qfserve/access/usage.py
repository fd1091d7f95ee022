"""The usage ledger: one row per chat request, written off the request path.

`record` only appends the row to a bounded deque; the first row after a write wakes the writer
thread, which waits `linger_seconds` for others to join it, then inserts what has gathered in
batches. A write per request held the interpreter lock in stretches the next request waited behind
(with the writes switched off, a gateway's time to first token was 0.7 ms shorter), and waking
the writer per row (a queue's notify) cost a thread switch per request; an idle server's writer
sleeps.
`close` writes every row left before it returns, so a clean shutdown loses no row. If the
database stays unreachable the deque fills; past its bound new rows are dropped and counted,
loudly, rather than letting memory grow without end.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, insert, select
from sqlalchemy.exc import SQLAlchemyError

from qfserve.store.database import Database
from qfserve.store.schema import UsageRow

log = logging.getLogger(__name__)

GroupBy = Literal["day", "endpoint", "user", "app"]
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


_COLUMNS = tuple(f.name for f in fields(UsageRecord))


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
    ) -> None:
        self._db = database
        self._linger = linger_seconds
        # deque's append and popleft are atomic: the event loop appends, the writer takes.
        self._pending: deque[UsageRecord] = deque()
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._dropped = 0
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set by the first row after a write, and by close
        self._writer: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        return self._dropped

    def start(self) -> None:
        self._stopping.clear()
        self._wake.set()  # rows recorded before the start
        self._writer = threading.Thread(target=self._write_loop, name="usage-ledger", daemon=True)
        self._writer.start()

    def record(self, row: UsageRecord) -> None:
        """Never blocks; wakes the writer only for the first row of a batch."""
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.error("usage ledger is full: %d rows dropped so far", self._dropped)
            return
        if row.created_at is None:
            row = replace(row, created_at=datetime.now(UTC))
        self._pending.append(row)
        if len(self._pending) == 1:
            self._wake.set()

    def close(self) -> None:
        """Write every pending row, then stop the writer."""
        if self._writer is None:
            return
        self._stopping.set()
        self._wake.set()
        self._writer.join()
        self._writer = None

    def _write_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            # Read before the drain: a row recorded after `close` began is written too.
            stopping = self._stopping.wait(self._linger)
            while self._pending:
                batch = [
                    self._pending.popleft()
                    for _ in range(min(self._batch_size, len(self._pending)))
                ]
                self._insert(batch)
            if stopping:
                return

    def _insert(self, batch: list[UsageRecord]) -> None:
        # Not dataclasses.asdict: it deep-copies every value, 16 us a row against under 1, all of
        # it holding the GIL the event loop is waiting for.
        rows = [{name: getattr(record, name) for name in _COLUMNS} for record in batch]
        for attempt in range(3):
            try:
                # Core, not the ORM: rows of plain values need no unit of work.
                with self._db.engine.begin() as connection:
                    connection.execute(insert(UsageRow), rows)
                return
            except SQLAlchemyError:
                log.warning("usage ledger: insert failed (attempt %d)", attempt + 1, exc_info=True)
                threading.Event().wait(0.5 * (attempt + 1))
        self._dropped += len(rows)
        log.error("usage ledger: %d rows lost after retries", len(rows))

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
        self, *, app_id: int | None = None, since: datetime | None = None, by: GroupBy = "day"
    ) -> list[UsageSummary]:
        """Requests and tokens per group, oldest or smallest group first."""
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
        with self._db.session() as session:
            rows = session.execute(query.order_by(group)).all()
        return [UsageSummary(_label(row[0]), int(row[1]), int(row[2]), int(row[3])) for row in rows]


def _label(value: object) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat()
    return str(value)
