"""`Database.read_one` keeps what it found on a SQLite file, converted, until any connection
commits: a token revoked by another process (the CLI) is refused from the next read on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row, bindparam, select, update

from qfserve.access.apps import AppRegistry
from qfserve.access.usage import UsageLedger, UsageRecord
from qfserve.store.database import Database
from qfserve.store.schema import AppRow

_NAME = select(AppRow.name).where(AppRow.id == bindparam("app_id"))


@dataclass
class Store:
    """Two processes' engines on one SQLite file, an app, and the names `read_one` converted."""

    server: Database
    cli: Database
    app_id: int
    converted: list[str] = field(default_factory=list)

    def name(self, row: Row[Any]) -> str:
        self.converted.append(row.name)
        return str(row.name)

    def read(self, app_id: int | None = None) -> str | None:
        return self.server.read_one(_NAME, {"app_id": app_id or self.app_id}, self.name)

    def rename(self, database: Database, name: str) -> None:
        with database.engine.begin() as connection:
            connection.execute(update(AppRow).where(AppRow.id == self.app_id).values(name=name))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'hot.db'}"
    server, cli = Database(url), Database(url)
    server.upgrade()
    try:
        yield Store(server, cli, AppRegistry(cli).create("before").app.app_id)
    finally:
        server.close()
        cli.close()


def test_a_commit_elsewhere_is_seen_by_the_next_read(store: Store) -> None:
    assert store.read() == "before"
    assert store.read() == "before"
    assert store.converted == ["before"]  # kept, converted, not read again
    store.rename(store.cli, "after")
    assert store.read() == "after"
    assert store.converted == ["before", "after"]
    assert store.read(store.app_id + 1) is None  # nothing found


def test_own_writes_keep_what_was_read_and_other_commits_do_not(store: Store) -> None:
    """The usage ledger commits on every request through `own_writes`: that must not make every
    request read its token again; a commit by any other connection still must."""
    assert store.read() == "before"
    ledger = UsageLedger(store.server)
    ledger.start()
    ledger.record(
        UsageRecord(
            "as-1",
            store.app_id,
            "e",
            None,
            prompt_tokens=1,
            completion_tokens=1,
            latency_ms=1,
            error_code=0,
        )
    )
    ledger.close()
    assert [s.requests for s in ledger.summarize(by="app")] == [1]  # the row is there
    assert store.read() == "before"
    assert store.converted == ["before"]  # still kept after the ledger's commit
    store.rename(store.server, "after")  # another of the server's own connections
    assert store.read() == "after"
