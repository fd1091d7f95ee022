"""The dashboard's series from the usage ledger, on SQLite and PostgreSQL: buckets aligned to the
epoch, counts and tokens per bucket and endpoint, errors (not a client leaving), latency
percentiles to two significant digits, filters, and the bound on buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from qfserve.admin.stats import MAX_BUCKETS, Dashboard, bucket_starts, percentile
from qfserve.store.database import Database
from qfserve.store.schema import UsageRow

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def _row(
    seconds: float, endpoint: str, latency: int, code: int = 0, app_id: int = 1
) -> dict[str, object]:
    return {
        "request_id": "r",
        "app_id": app_id,
        "endpoint": endpoint,
        "user_id": None,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "latency_ms": latency,
        "error_code": code,
        "safety_category": None,
        "created_at": START + timedelta(seconds=seconds),
    }


def test_series_per_bucket_and_endpoint(database: Database) -> None:
    rows = [
        # first minute: a: 100 ms x 9 and one 1234 ms; b: one error, one client gone
        *(_row(5 + n, "a", 100) for n in range(9)),
        _row(30, "a", 1234),
        _row(40, "b", 50, code=336100),
        _row(41, "b", 70, code=499),
        # third minute: one request of another app
        _row(150, "a", 20, app_id=2),
        # outside the range
        _row(-1, "a", 1),
        _row(180, "a", 1),
    ]
    with database.engine.begin() as connection:
        connection.execute(insert(UsageRow), rows)
    found = Dashboard(database).time_series(START, START + timedelta(minutes=3), 60)
    assert found.buckets == [START + timedelta(minutes=m) for m in range(3)]
    together, a, b = found.series
    assert (together.endpoint, a.endpoint, b.endpoint) == (None, "a", "b")
    assert together.requests == [12, 0, 1]
    assert together.errors == [1, 0, 0]
    assert together.prompt_tokens == [120, 0, 10] and together.completion_tokens == [60, 0, 5]
    assert a.requests == [10, 0, 1] and b.requests == [2, 0, 0]
    assert a.latency_p50_ms == [100, None, 20]
    assert a.latency_p95_ms == [1200, None, 20]  # 1234 to two significant digits
    assert b.latency_p50_ms == [50, None, None] and b.latency_p95_ms == [70, None, None]

    only_app_2 = Dashboard(database).time_series(START, START + timedelta(minutes=3), 60, app_id=2)
    assert [s.requests for s in only_app_2.series] == [[0, 0, 1], [0, 0, 1]]
    only_b = Dashboard(database).time_series(START, START + timedelta(minutes=3), 60, endpoint="b")
    assert [s.endpoint for s in only_b.series] == [None, "b"]


def test_buckets_are_aligned_and_bounded() -> None:
    starts = bucket_starts(START + timedelta(seconds=61), START + timedelta(seconds=190), 60)
    assert starts == [START + timedelta(minutes=m) for m in (1, 2, 3)]
    with pytest.raises(ValueError, match="buckets"):
        bucket_starts(START, START + timedelta(seconds=MAX_BUCKETS + 1), 1)
    with pytest.raises(ValueError, match="after"):
        bucket_starts(START, START, 60)


def test_percentile_is_nearest_rank_over_counts() -> None:
    assert percentile([(10, 1)], 0.95) == 10
    assert percentile([(10, 50), (20, 50)], 0.5) == 10
    assert percentile([(10, 50), (20, 51)], 0.5) == 20
    assert percentile([(1, 94), (500, 6)], 0.95) == 500
