"""Percentiles and throughput over a run's records. Pure."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qfserve.bench import loops
from qfserve.bench.client import RequestRecord

QUANTILES = (50, 95, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> dict[str, Any]:
    summary: dict[str, Any] = {f"p{q}": percentile(values, q) for q in QUANTILES}
    summary["mean"] = sum(values) / len(values) if values else None
    summary["max"] = max(values) if values else None
    summary["n"] = len(values)
    return summary


@dataclass(slots=True)
class RunResult:
    """One peer at one concurrency; several rounds merge into one (`merge`)."""

    peer: str
    concurrency: int
    records: list[RequestRecord] = field(default_factory=list)
    wall_s: float = 0.0
    peak_rss_bytes: int | None = None
    rounds: int = 1


def merge(runs: Sequence[RunResult]) -> RunResult:
    """Rounds of the same peer and concurrency as one run: records pooled, wall times added, so
    that throughput is all tokens over all the time spent producing them."""
    first = runs[0]
    peaks = [r.peak_rss_bytes for r in runs if r.peak_rss_bytes is not None]
    return RunResult(
        peer=first.peer,
        concurrency=first.concurrency,
        records=[record for run in runs for record in run.records],
        wall_s=sum(r.wall_s for r in runs),
        peak_rss_bytes=max(peaks) if peaks else None,
        rounds=sum(r.rounds for r in runs),
    )


def output_tokens_per_s(records: Iterable[RequestRecord], wall_s: float) -> float | None:
    """Aggregate throughput: every answered token over the wall time of the whole run."""
    total = sum(r.output_tokens for r in records if r.ok)
    return total / wall_s if wall_s > 0 else None


def per_stream_tokens_per_s(records: Iterable[RequestRecord]) -> float | None:
    """What one client gets: the answered tokens over the time their requests took, end to end
    (queueing and prefill included). Unlike the aggregate over the wall time, it does not count
    the time a stream sat idle at the end of a run waiting for others to finish."""
    ok = [r for r in records if r.ok]
    seconds = sum(r.e2e_s for r in ok)
    return sum(r.output_tokens for r in ok) / seconds if seconds > 0 else None


def summarize(run: RunResult) -> dict[str, Any]:
    ok = [r for r in run.records if r.ok]
    errors = [r.error for r in run.records if r.error is not None]
    return {
        "peer": run.peer,
        "concurrency": run.concurrency,
        "requests": len(run.records),
        "rounds": run.rounds,
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:3],
        "output_tokens": sum(r.output_tokens for r in ok),
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "wall_s": run.wall_s,
        "output_tokens_per_s": output_tokens_per_s(ok, run.wall_s),
        "ttft_s": distribution([t for r in ok if (t := r.ttft_s) is not None]),
        "first_event_s": distribution([t for r in ok if (t := r.first_event_s) is not None]),
        "itl_s": distribution([gap for r in ok for gap in r.itl_s]),
        "e2e_s": distribution([r.e2e_s for r in ok]),
        "peak_rss_bytes": run.peak_rss_bytes,
        "counted_by": dict(Counter(r.counted_by for r in ok)),
        "finish": dict(Counter(r.finish or "none" for r in ok)),
        "loops": loops.count((r.lang, r.text) for r in ok),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


@dataclass(slots=True)
class FullBatch:
    """A case's answered tokens and stream-seconds while every stream of its run was decoding
    (each had its first token and not yet its last): with the batch at its set size throughout,
    streams of different runs are compared at the same load, which the tail of a run, where
    streams whose answers ended early have left the batch, would not give."""

    tokens: float = 0.0
    stream_s: float = 0.0

    def add(self, other: FullBatch) -> None:
        self.tokens += other.tokens
        self.stream_s += other.stream_s

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.stream_s if self.stream_s > 0 else None


def _decoding(record: RequestRecord) -> tuple[float, float] | None:
    """When a record's stream was decoding, from its run's start: first token to last."""
    if not record.ok or len(record.token_times) < 2:
        return None
    return record.start_s + record.token_times[0], record.start_s + record.token_times[-1]


def full_batch(cases: dict[str, RunResult], concurrency: int) -> dict[str, FullBatch]:
    """`FullBatch` of each case of one run (its lanes, which ran at once). A token counts from
    its arrival, and the server's count of an answer's tokens is spread over its events."""
    spans = [span for run in cases.values() for r in run.records if (span := _decoding(r))]
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    full: list[tuple[float, float]] = []
    decoding = 0
    for (at, step), (then, _) in itertools.pairwise([*edges, (math.inf, 0)]):
        decoding += step
        if decoding >= concurrency and then > at:
            full.append((at, then))
    found: dict[str, FullBatch] = {}
    for name, run in cases.items():
        share = found.setdefault(name, FullBatch())
        for record in run.records:
            span = _decoding(record)
            if span is None:
                continue
            per_event = record.output_tokens / len(record.token_times)
            for low, high in full:
                share.stream_s += max(0.0, min(high, span[1]) - max(low, span[0]))
                arrived = sum(low < record.start_s + t <= high for t in record.token_times[1:])
                share.tokens += arrived * per_event
    return found
