"""The dashboard's time series: requests, errors, tokens and latency per time bucket, for every
endpoint together and for each, counted from the usage ledger."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select

from qfserve.store.database import Database
from qfserve.store.schema import UsageRow

MAX_BUCKETS = 1500
# Success, and a client that left: neither is the server's error.
NOT_ERRORS = frozenset({0, 499})


@dataclass(slots=True)
class Series:
    endpoint: str | None  # None: every endpoint together
    requests: list[int]
    errors: list[int]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    latency_p50_ms: list[int | None]
    latency_p95_ms: list[int | None]
    # Per bucket: how many requests took each latency (ms).
    _latencies: list[dict[int, int]] = field(default_factory=list, repr=False)

    @classmethod
    def empty(cls, endpoint: str | None, buckets: int) -> Series:
        return cls(
            endpoint,
            [0] * buckets,
            [0] * buckets,
            [0] * buckets,
            [0] * buckets,
            [None] * buckets,
            [None] * buckets,
            [{} for _ in range(buckets)],
        )

    def add(
        self, bucket: int, latency: int, requests: int, errors: int, prompt: int, completion: int
    ) -> None:
        self.requests[bucket] += requests
        self.errors[bucket] += errors
        self.prompt_tokens[bucket] += prompt
        self.completion_tokens[bucket] += completion
        counts = self._latencies[bucket]
        counts[latency] = counts.get(latency, 0) + requests

    def finish(self) -> None:
        for bucket, counts in enumerate(self._latencies):
            if counts:
                ordered = sorted(counts.items())
                self.latency_p50_ms[bucket] = percentile(ordered, 0.50)
                self.latency_p95_ms[bucket] = percentile(ordered, 0.95)
        self._latencies = []


@dataclass(frozen=True, slots=True)
class TimeSeries:
    since: datetime
    until: datetime
    bucket_seconds: int
    buckets: list[datetime]
    series: list[Series]  # every endpoint together first, then each endpoint by name


def percentile(ordered: list[tuple[int, int]], fraction: float) -> int:
    """The nearest-rank percentile of values given in order, each with how often it occurs."""
    rank = max(1, math.ceil(fraction * sum(count for _, count in ordered)))
    seen = 0
    for value, count in ordered:
        seen += count
        if seen >= rank:
            return value
    return ordered[-1][0]


def bucket_starts(since: datetime, until: datetime, bucket_seconds: int) -> list[datetime]:
    """Bucket starts aligned to multiples of `bucket_seconds` since the epoch, covering
    [since, until). Raises ValueError past MAX_BUCKETS or for an empty range."""
    if bucket_seconds < 1:
        raise ValueError("bucket_seconds must be at least 1")
    if until <= since:
        raise ValueError("until must be after since")
    first = math.floor(since.timestamp() / bucket_seconds) * bucket_seconds
    count = math.ceil((until.timestamp() - first) / bucket_seconds)
    if count > MAX_BUCKETS:
        raise ValueError(
            f"{count} buckets asked for, at most {MAX_BUCKETS}: a larger bucket_seconds"
        )
    return [datetime.fromtimestamp(first + i * bucket_seconds, UTC) for i in range(count)]


def _two_digits(latency_ms: Any) -> Any:
    """Latency cut to two significant digits (1234 ms: 1200), so that a bucket holds a few
    hundred distinct values at most, however many requests: its percentiles are then within
    10 % below the exact ones."""
    steps = [(latency_ms < 100, latency_ms)]
    steps += [
        (latency_ms < limit, (latency_ms // (limit // 100)) * (limit // 100))
        for limit in (1_000, 10_000, 100_000, 1_000_000)
    ]
    return case(*steps, else_=(latency_ms // 100_000) * 100_000)


class Dashboard:
    """Blocking database calls: the server runs them in a worker thread."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def time_series(
        self,
        since: datetime,
        until: datetime,
        bucket_seconds: int,
        *,
        app_id: int | None = None,
        endpoint: str | None = None,
    ) -> TimeSeries:
        starts = bucket_starts(since, until, bucket_seconds)
        # The bucket and the counts in SQL, one row per bucket, endpoint and latency: only
        # integers come back, however many requests the range holds.
        bucket = func.floor(
            (self._epoch_seconds(UsageRow.created_at) - starts[0].timestamp()) / bucket_seconds
        ).label("bucket")
        is_error = case((UsageRow.error_code.in_(NOT_ERRORS), 0), else_=1)
        latency = _two_digits(UsageRow.latency_ms).label("latency")
        query = (
            select(
                bucket,
                UsageRow.endpoint,
                latency,
                func.count(),
                func.sum(is_error),
                func.sum(UsageRow.prompt_tokens),
                func.sum(UsageRow.completion_tokens),
            )
            .where(UsageRow.created_at >= since, UsageRow.created_at < until)
            .group_by(bucket, UsageRow.endpoint, latency)
        )
        if app_id is not None:
            query = query.where(UsageRow.app_id == app_id)
        if endpoint is not None:
            query = query.where(UsageRow.endpoint == endpoint)
        together = Series.empty(None, len(starts))
        per_endpoint: dict[str, Series] = {}
        with self._db.session() as session:
            rows = session.execute(query).all()
        for index, name, latency, requests, errors, prompt, completion in rows:
            at = int(index)
            if not 0 <= at < len(starts):
                continue
            counts = (int(requests), int(errors), int(prompt), int(completion))
            together.add(at, int(latency), *counts)
            if name not in per_endpoint:
                per_endpoint[name] = Series.empty(name, len(starts))
            per_endpoint[name].add(at, int(latency), *counts)
        series = [together, *(per_endpoint[name] for name in sorted(per_endpoint))]
        for one in series:
            one.finish()
        return TimeSeries(since, until, bucket_seconds, starts, series)

    def _epoch_seconds(self, column: Any) -> Any:
        """Seconds since the epoch of a stored time: SQLite keeps UTC text, PostgreSQL a
        timestamp with its zone."""
        if self._db.is_sqlite:
            return (func.julianday(column) - 2440587.5) * 86400.0
        return func.extract("epoch", column)
