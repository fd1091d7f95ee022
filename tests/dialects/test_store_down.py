"""A store that cannot be read answers the one retryable "service unavailable" error in every
dialect (V1 error 2, OpenAI 503, V2 503 `service_unavailable`), never an internal error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from qfserve.store.database import Database
from tests.dialects.dialects import DIALECTS, Ask, Dialect
from tests.inprocess import running


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_unreadable_store_is_service_unavailable(
    tmp_path: Path, dialect: Dialect, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path) as served:
        secret = dialect.secret(served, served.new_app())

        def unreachable(*_args: Any, **_kwargs: Any) -> Any:
            raise OperationalError("SELECT 1", {}, Exception("the disk is gone"))

        # Both the token check's plain read and its kept-rows path go through `_read_one`;
        # nothing is kept yet for this secret.
        monkeypatch.setattr(Database, "_read_one", unreachable)
        failure = dialect.failure(dialect.post(served, secret, Ask()))
    assert failure.code == dialect.code(2, "service_unavailable")
    assert failure.status == (200 if dialect.name == "v1" else 503)
