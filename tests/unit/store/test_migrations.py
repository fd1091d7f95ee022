"""The schema migrates in place: a database made by an earlier revision keeps its data."""

from __future__ import annotations

import multiprocessing
import time
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

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
            # As text: sqlite3's default datetime adapter is deprecated from Python 3.12.
            {"now": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")},
        )
    database.upgrade()
    tables = set(inspect(database.engine).get_table_names())
    assert {"apps", "access_tokens", "iam_keys", "usage_records", "app_keys", "v2_keys"} <= tables
    assert {"request_log", "admins", "admin_tokens", "admin_sessions", "admin_audit"} <= tables
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


def _upgrade_when_all_ready(url: str, ready: Barrier, failures: Queue[str]) -> None:
    database = Database(url)
    ready.wait(timeout=60)
    try:
        database.upgrade()
    except Exception as exc:  # the parent reports it
        failures.put(repr(exc))
    database.close()


def upgrade_at_once(url: str, gateways: int = 4) -> None:
    """Several gateway processes bring one fresh database up at the same moment."""
    # Processes, not threads: alembic keeps its migration context in module globals.
    forked = multiprocessing.get_context("fork")
    ready, failures = forked.Barrier(gateways), forked.Queue()
    processes = [
        forked.Process(target=_upgrade_when_all_ready, args=(url, ready, failures))
        for _ in range(gateways)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + 60
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            process.kill()
    assert all(p.exitcode == 0 for p in processes), "an upgrade is stuck or crashed"
    found = []
    while not failures.empty():
        found.append(failures.get())
    assert not found, found
    database = Database(url)
    tables = set(inspect(database.engine).get_table_names())
    assert {"apps", "access_tokens", "iam_keys", "usage_records", "alembic_version"} <= tables
    with database.engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    assert len(versions) == 1
    apps = AppRegistry(database)
    created = apps.create("after-the-race")
    assert [a.app_id for a in apps.all()] == [created.app.app_id]
    database.close()


@pytest.mark.postgres
def test_gateways_starting_together_migrate_postgres_once() -> None:
    with running_postgres() as url:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        base = url.rsplit("/", 1)[0]
        for round_ in range(5):
            with admin.connect() as connection:
                connection.execute(text(f"CREATE DATABASE race{round_}"))
            upgrade_at_once(f"{base}/race{round_}")
        admin.dispose()


def test_processes_starting_together_migrate_sqlite_once(tmp_path: Path) -> None:
    for round_ in range(5):
        upgrade_at_once(f"sqlite:///{tmp_path / f'race{round_}.db'}")
