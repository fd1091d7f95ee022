"""`Database.read_one` keeps what it found on a SQLite file, converted, until any connection
commits: a token revoked by another process (the CLI) is refused from the next read on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Row, bindparam, select, update

from qfserve.access.apps import AppRegistry
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
