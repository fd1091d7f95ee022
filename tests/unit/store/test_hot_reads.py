"""`Database.read_one` keeps rows found on a SQLite file until any connection commits: a token
revoked by another process (the CLI) is refused from the next read on."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import bindparam, select, update

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
        first = server.read_one(_NAME, {"app_id": app_id})
        assert first is not None and first.name == "before"
        assert server.read_one(_NAME, {"app_id": app_id}) is first  # kept, not read again

        with cli.engine.begin() as connection:
            connection.execute(update(AppRow).where(AppRow.id == app_id).values(name="after"))
        after = server.read_one(_NAME, {"app_id": app_id})
        assert after is not None and after.name == "after"

        assert server.read_one(_NAME, {"app_id": app_id + 1}) is None  # nothing found
    finally:
        server.close()
        cli.close()
