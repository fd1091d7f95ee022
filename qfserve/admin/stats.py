"""The dashboard's time series: requests, errors, tokens and latency per time bucket, for every
endpoint together and for each, counted from the usage ledger."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select

from qfserve.admin.times import aware
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
    _latencies: list[list[int]] = field(default_factory=list, repr=False)

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
            [[] for _ in range(buckets)],
        )

    def add(self, bucket: int, error_code: int, prompt: int, completion: int, latency: int) -> None:
        self.requests[bucket] += 1
        self.errors[bucket] += error_code not in NOT_ERRORS
        self.prompt_tokens[bucket] += prompt
        self.completion_tokens[bucket] += completion
        self._latencies[bucket].append(latency)

    def finish(self) -> None:
        for bucket, latencies in enumerate(self._latencies):
            if latencies:
                latencies.sort()
                self.latency_p50_ms[bucket] = percentile(latencies, 0.50)
                self.latency_p95_ms[bucket] = percentile(latencies, 0.95)
        self._latencies = []


@dataclass(frozen=True, slots=True)
class TimeSeries:
    since: datetime
    until: datetime
    bucket_seconds: int
    buckets: list[datetime]
    series: list[Series]  # every endpoint together first, then each endpoint by name


def percentile(ordered: list[int], fraction: float) -> int:
    """The nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


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
        origin = starts[0].timestamp()
        query = (
            select(
                UsageRow.created_at,
                UsageRow.endpoint,
                UsageRow.error_code,
                UsageRow.prompt_tokens,
                UsageRow.completion_tokens,
                UsageRow.latency_ms,
            )
            .where(UsageRow.created_at >= since, UsageRow.created_at < until)
            .execution_options(yield_per=2000)
        )
        if app_id is not None:
            query = query.where(UsageRow.app_id == app_id)
        if endpoint is not None:
            query = query.where(UsageRow.endpoint == endpoint)
        together = Series.empty(None, len(starts))
        per_endpoint: dict[str, Series] = {}
        with self._db.session() as session:
            for created, name, code, prompt, completion, latency in session.execute(query):
                bucket = int((aware(created).timestamp() - origin) // bucket_seconds)
                if not 0 <= bucket < len(starts):
                    continue
                together.add(bucket, code, prompt, completion, latency)
                if name not in per_endpoint:
                    per_endpoint[name] = Series.empty(name, len(starts))
                per_endpoint[name].add(bucket, code, prompt, completion, latency)
        series = [together, *(per_endpoint[name] for name in sorted(per_endpoint))]
        for one in series:
            one.finish()
        return TimeSeries(since, until, bucket_seconds, starts, series)
