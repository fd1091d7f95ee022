from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qfserve.store.database import Database
from tests.inprocess import InProcess, running
from tests.pg_server import running_postgres


@pytest.fixture
def qf(tmp_path: Path) -> Iterator[InProcess]:
    """qfserve in-process on the fake engine, its admin surface on the (loopback) chat port."""
    with running(tmp_path) as served:
        yield served


@pytest.fixture(scope="module")
def shared_qf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """One such server for a module's tests that only need a fresh client's cookies."""
    with running(tmp_path_factory.mktemp("admin")) as served:
        yield served


@pytest.fixture
def fresh(shared_qf: InProcess) -> Iterator[InProcess]:
    """The module's server, its client signed out."""
    shared_qf.client.cookies.clear()
    yield shared_qf
    shared_qf.client.cookies.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated store, on SQLite and on a private PostgreSQL."""
    if request.param == "sqlite":
        found = Database(f"sqlite:///{tmp_path / 'admin.db'}")
        found.upgrade()
        yield found
        found.close()
        return
    with running_postgres() as url:
        found = Database(url)
        found.upgrade()
        yield found
        found.close()
