"""The usage ledger's writer, on a real SQLite file: rows recorded on the request path reach the
database in batches, a close writes what is left, and a full ledger drops and counts."""

from __future__ import annotations

from pathlib import Path

from qfserve.access.apps import AppRegistry
from qfserve.access.usage import UsageLedger, UsageRecord
from qfserve.store.database import Database
from tests.waiting import wait_until


def _database(tmp_path: Path) -> tuple[Database, int]:
    database = Database(f"sqlite:///{tmp_path / 'ledger.db'}")
    database.upgrade()
    return database, AppRegistry(database).create("ledger").app.app_id


def _row(app_id: int, n: int) -> UsageRecord:
    return UsageRecord(f"r{n}", app_id, "llama_2_7b", None, 10, n, 5, 0)


def test_rows_are_written_off_the_request_path_and_close_writes_the_rest(tmp_path: Path) -> None:
    database, app_id = _database(tmp_path)
    ledger = UsageLedger(database, batch_size=7, linger_seconds=0.05)
    ledger.start()
    for n in range(20):
        ledger.record(_row(app_id, n))
    summary = wait_until(
        lambda: [s for s in ledger.summarize(by="app") if s.requests >= 20],
        timeout=5,
        interval=0.02,
        what="the writer's rows",
    )
    assert summary[0].completion_tokens == sum(range(20))

    slow = UsageLedger(database, linger_seconds=3600.0)
    slow.start()
    for n in range(20, 25):
        slow.record(_row(app_id, n))
    slow.close()  # at once, not after an hour, and with every row written
    ledger.close()
    assert ledger.summarize(by="app")[0].requests == 25
    database.close()


def test_a_full_ledger_drops_and_counts(tmp_path: Path) -> None:
    database, app_id = _database(tmp_path)
    ledger = UsageLedger(database, max_pending=3)  # not started: nothing is taken
    for n in range(5):
        ledger.record(_row(app_id, n))
    assert ledger.dropped == 2
    ledger.start()
    ledger.close()
    assert ledger.summarize(by="app")[0].requests == 3
    database.close()
