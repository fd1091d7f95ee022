"""Finishing a call, in process on a real SQLite file: it returns once the call's usage row is
committed (so a route that finishes before its last byte bills every answer a client received),
within a bounded wait when the database is down, and logs one line per request that carries ids,
codes, counts and times but never a credential or any text."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import select

from qfserve.access.app_keys import AppKeys
from qfserve.access.apps import App, AppRegistry
from qfserve.access.gate import AccessGate, Credentials
from qfserve.access.iam_keys import IamKeys
from qfserve.access.quota import QuotaEnforcer, QuotaLimits
from qfserve.access.tokens import TokenIssuer
from qfserve.access.usage import UsageLedger
from qfserve.access.v2_keys import V2Keys
from qfserve.config import Settings
from qfserve.metrics import Metrics
from qfserve.store.database import Database
from qfserve.store.schema import UsageRow
from tests.servers import free_port


class _Counts:
    def count(self, endpoint: str, error_code: int) -> None:
        pass


def _gate(database: Database, ledger: UsageLedger, **options: Any) -> AccessGate:
    return AccessGate(
        TokenIssuer(database, 3600),
        IamKeys(database, b"master"),
        AppKeys(database),
        ledger,
        cast(Metrics, _Counts()),
        QuotaEnforcer.from_url(""),
        QuotaLimits.from_config(),
        v2_keys=V2Keys(database),
        inline_lookups=True,
        **options,
    )


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'gate.db'}")
    database.upgrade()
    yield database
    database.close()


def _stored(database: Database) -> list[tuple[str, int, int]]:
    query = select(UsageRow.request_id, UsageRow.error_code, UsageRow.completion_tokens)
    with database.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query).all()]  # type: ignore[misc]


def test_finish_returns_once_the_usage_row_is_committed(database: Database) -> None:
    created = AppRegistry(database).create("billed")
    token = TokenIssuer(database, 3600).issue(created.app.app_id).access_token
    # An hour's linger: a row nobody waited for would not be written before the close.
    ledger = UsageLedger(database, linger_seconds=3600.0)
    ledger.start()
    gate = _gate(database, ledger)

    async def request(n: int) -> None:
        call = gate.open_call(f"req{n}", "llama_2_7b")
        await gate.authenticate(call, Credentials(access_token=token))
        await gate.admit(call, 100)
        await call.finish(0, n)

    asyncio.run(request(7))
    assert _stored(database) == [("req7", 0, 7)]

    async def concurrent() -> None:
        await asyncio.gather(*(request(n) for n in range(20)))

    asyncio.run(concurrent())
    assert len(_stored(database)) == 21
    ledger.close()


def test_finish_answers_within_a_bound_when_the_database_is_down(database: Database) -> None:
    down = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    ledger = UsageLedger(down, commit_wait_seconds=0.5)
    ledger.start()
    gate = _gate(database, ledger)
    app = App(1, "a", "key", datetime.now(UTC), False, False, {}, None)

    async def request() -> None:
        call = gate.open_call("req", "llama_2_7b")
        call.app = app
        await call.finish(0, 3)

    started = time.monotonic()
    asyncio.run(request())
    assert time.monotonic() - started < 2
    ledger.close()
    down.close()


def test_one_line_per_request_with_ids_codes_counts_and_no_secrets(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    created = AppRegistry(database).create("logged")
    token = TokenIssuer(database, 3600).issue(created.app.app_id).access_token
    ledger = UsageLedger(database)
    ledger.start()
    gate = _gate(database, ledger)

    async def request(request_id: str, credentials: Credentials) -> None:
        call = gate.open_call(request_id, "llama_2_7b")
        try:
            await gate.authenticate(call, credentials)
        except Exception as error:
            await call.finish(getattr(error, "code", -1))
            return
        call.user_id = "user-who-must-not-be-logged"
        call.prompt_tokens = 12
        await call.finish(0, 34)

    caplog.set_level(logging.INFO, logger="qfserve.requests")
    asyncio.run(request("okrequest", Credentials(access_token=token)))
    asyncio.run(request("badrequest", Credentials(access_token="not-a-token-" + token)))
    lines = [r.getMessage() for r in caplog.records if r.name == "qfserve.requests"]
    assert len(lines) == 2
    ok, bad = lines
    for field in (
        "request_id=okrequest",
        f"app_id={created.app.app_id}",
        "endpoint=llama_2_7b",
        "code=0",
        "prompt_tokens=12",
        "completion_tokens=34",
        "latency_ms=",
    ):
        assert field in ok
    assert "request_id=badrequest" in bad and "app_id=-" in bad and "code=0" not in bad
    everything = caplog.text
    for secret in (token, created.secret_key, created.app.api_key, "user-who-must-not"):
        assert secret not in everything

    caplog.clear()
    quiet = _gate(database, ledger, log_requests=False)
    call = quiet.open_call("quiet", "llama_2_7b")
    asyncio.run(call.finish(0))
    assert not [r for r in caplog.records if r.name == "qfserve.requests"]
    ledger.close()


def test_request_lines_are_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().log_requests is True
    monkeypatch.setenv("QFSERVE_LOG_REQUESTS", "false")
    assert Settings().log_requests is False
