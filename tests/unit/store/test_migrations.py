"""The schema migrates in place: a database made by an earlier revision keeps its data."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from qfserve.access.apps import AppRegistry
from qfserve.access.tokens import TokenIssuer
from qfserve.store.database import Database
from tests.pg_server import running_postgres


def migrate_from_first_revision(url: str) -> None:
    database = Database(url)
    database.upgrade("0001")
    # Rows as the first schema wrote them, without the columns later revisions add.
    with database.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO apps (name, api_key, secret_hash, created_at, disabled) "
                "VALUES ('old', 'OLDKEY', 'scrypt$1$1$1$00$00', :now, false)"
            ),
            {"now": datetime.now(UTC)},
        )
    database.upgrade()
    tables = set(inspect(database.engine).get_table_names())
    assert {"apps", "access_tokens", "iam_keys", "usage_records", "app_keys", "v2_keys"} <= tables
    apps = AppRegistry(database)
    (old,) = apps.all()
    assert (old.name, old.api_key, old.deleted, old.endpoints) == ("old", "OLDKEY", False, None)
    assert old.quota == {"qps": None, "rpm": None, "tpm": None, "daily": None, "total": None}
    token = TokenIssuer(database, 3600).issue(old.app_id)
    assert TokenIssuer(database, 3600).verify(token.access_token).app_id == old.app_id
    database.upgrade()  # idempotent
    database.close()


def test_sqlite_migrates_in_place(tmp_path: Path) -> None:
    migrate_from_first_revision(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_postgres_migrates_in_place() -> None:
    with running_postgres() as url:
        migrate_from_first_revision(url)
