from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dialects.dialects import DIALECTS, Dialect
from tests.inprocess import InProcess, running


@pytest.fixture
def qf(tmp_path: Path) -> Iterator[InProcess]:
    """qfserve in-process on a fresh FakeEngine and a fresh SQLite store."""
    with running(tmp_path) as serving:
        yield serving


@pytest.fixture(params=DIALECTS, ids=lambda d: d.name)
def dialect(request: pytest.FixtureRequest) -> Dialect:
    chosen: Dialect = request.param
    return chosen


@pytest.fixture
def secret(qf: InProcess, dialect: Dialect) -> str:
    """The dialect's credential for a fresh app with no quota."""
    return dialect.secret(qf, qf.new_app())
