"""`Database.read_one` keeps what it found on a SQLite file, converted, until any connection
commits: a token revoked by another process (the CLI) is refused from the next read on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Row, bindparam, select, update

from qfserve.access.apps import AppRegistry
from qfserve.access.usage import UsageLedger, UsageRecord
from qfserve.store.database import Database
from qfserve.store.schema import AppRow

_NAME = select(AppRow.name).where(AppRow.id == bindparam("app_id"))


def test_a_commit_elsewhere_is_seen_by_the_next_read(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hot.db'}"
    server, cli = Database(url), Database(url)  # two processes' engines on one file
    server.upgrade()
    app_id = AppRegistry(cli).create("before").app.app_id
    try:
        converted: list[str] = []

        def name(row: Row[Any]) -> str:
            converted.append(row.name)
            return str(row.name)

        assert server.read_one(_NAME, {"app_id": app_id}, name) == "before"
        assert server.read_one(_NAME, {"app_id": app_id}, name) == "before"
        assert converted == ["before"]  # kept, converted, not read again

        with cli.engine.begin() as connection:
            connection.execute(update(AppRow).where(AppRow.id == app_id).values(name="after"))
        assert server.read_one(_NAME, {"app_id": app_id}, name) == "after"
        assert converted == ["before", "after"]

        assert server.read_one(_NAME, {"app_id": app_id + 1}, name) is None  # nothing found
    finally:
        server.close()
        cli.close()


def test_own_writes_keep_what_was_read_and_other_commits_do_not(tmp_path: Path) -> None:
    """The usage ledger commits on every request through `own_writes`: that must not make every
    request read its token again; a commit by any other connection still must."""
    url = f"sqlite:///{tmp_path / 'hot.db'}"
    server, cli = Database(url), Database(url)
    server.upgrade()
    app_id = AppRegistry(cli).create("before").app.app_id
    try:
        converted: list[str] = []

        def name(row: Row[Any]) -> str:
            converted.append(row.name)
            return str(row.name)

        assert server.read_one(_NAME, {"app_id": app_id}, name) == "before"
        ledger = UsageLedger(server)
        ledger.start()
        ledger.record(
            UsageRecord(
                "as-1",
                app_id,
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
        assert server.read_one(_NAME, {"app_id": app_id}, name) == "before"
        assert converted == ["before"]  # still kept after the ledger's commit

        with server.engine.begin() as connection:  # another of the server's own connections
            connection.execute(update(AppRow).where(AppRow.id == app_id).values(name="after"))
        assert server.read_one(_NAME, {"app_id": app_id}, name) == "after"
    finally:
        server.close()
        cli.close()
