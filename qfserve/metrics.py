"""Prometheus metrics: what the serving layer observes per request, and the engines' own
gauges and totals, read from `Engine.stats()` at scrape time so the engine thread never waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from qfserve.access.quota import QuotaHealth
from qfserve.engines.registry import EngineRegistry

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


class Metrics:
    def __init__(
        self, engines: EngineRegistry, quota_health: Callable[[], QuotaHealth] | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "qfserve_requests",
            "Chat requests answered, by endpoint and error code (0: success).",
            ["endpoint", "error_code"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "qfserve_time_to_first_token_seconds",
            "From the request's arrival to its first generated token.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            "qfserve_time_per_output_token_seconds",
            "Mean gap between output tokens after the first, per request.",
            ["endpoint"],
            buckets=_TOKEN_GAP_BUCKETS,
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "qfserve_request_duration_seconds",
            "End-to-end latency of a generation, from arrival to its last token.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.safety_hits = Counter(
            "qfserve_safety_hits",
            "Content safety hits, by category and by where (question, history, answer).",
            ["category", "where"],
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engines))
        if quota_health is not None:
            self.registry.register(_QuotaCollector(quota_health))
        self._served = frozenset(engines.names())
        # The labelled histograms of each endpoint, looked up once rather than per request.
        self._series: dict[str, _EndpointSeries] = {}

    def safety_hit(self, category: str, where: str) -> None:
        self.safety_hits.labels(category, where).inc()

    def clock(self, endpoint: str) -> RequestClock:
        """`endpoint` is a served endpoint's name: a series is made once per endpoint."""
        series = self._series.get(endpoint)
        if series is None:
            series = _EndpointSeries(
                self.time_to_first_token.labels(endpoint),
                self.time_per_output_token.labels(endpoint),
                self.request_latency.labels(endpoint),
            )
            self._series[endpoint] = series
        return RequestClock(series)

    def count(self, endpoint: str, error_code: int) -> None:
        # Endpoint names come from URLs: an unknown one must not mint a new series per request.
        label = endpoint if endpoint in self._served else "unknown"
        self.requests.labels(label, str(error_code)).inc()


@dataclass(frozen=True, slots=True)
class _EndpointSeries:
    time_to_first_token: Histogram
    time_per_output_token: Histogram
    request_latency: Histogram


@dataclass(slots=True)
class RequestClock:
    """Times one generation: its first token, and its end."""

    series: _EndpointSeries
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    finished: bool = False

    def tokens(self, count: int) -> None:
        if count and self.first_token is None:
            self.first_token = time.monotonic()
            elapsed = self.first_token - self.started
            # Observed once the event loop is done with this step, which writes the first token
            # to the client: the bookkeeping does not delay what it measures.
            observe = self.series.time_to_first_token.observe
            try:
                asyncio.get_running_loop().call_soon(observe, elapsed)
            except RuntimeError:  # no event loop: at once
                observe(elapsed)

    def finish(self, completion_tokens: int) -> None:
        if self.finished:
            return
        self.finished = True
        now = time.monotonic()
        self.series.request_latency.observe(now - self.started)
        if self.first_token is not None and completion_tokens > 1:
            gap = (now - self.first_token) / (completion_tokens - 1)
            self.series.time_per_output_token.observe(gap)


class _EngineCollector(Collector):
    def __init__(
        self, engines: EngineRegistry, quota_health: Callable[[], QuotaHealth] | None = None
    ) -> None:
        self._engines = engines

    def collect(self) -> Iterable[Metric]:
        running = GaugeMetricFamily(
            "qfserve_running_sequences", "Sequences being generated.", labels=["endpoint"]
        )
        waiting = GaugeMetricFamily(
            "qfserve_queue_depth", "Requests waiting for a sequence.", labels=["endpoint"]
        )
        prompt = CounterMetricFamily(
            "qfserve_prompt_tokens", "Prompt tokens of admitted requests.", labels=["endpoint"]
        )
        cached = CounterMetricFamily(
            "qfserve_prompt_tokens_cached",
            "Prompt tokens served from the prefix cache instead of being prefilled.",
            labels=["endpoint"],
        )
        generated = CounterMetricFamily(
            "qfserve_generation_tokens", "Tokens generated.", labels=["endpoint"]
        )
        kv_cells = GaugeMetricFamily(
            "qfserve_kv_cells",
            "Cells of a KV cache pool shared by the sequences: total, reserved by running "
            "sequences (prompt plus max tokens), held by idle slots' cached prefixes.",
            labels=["endpoint", "state"],
        )
        labels = ["endpoint", "upstream"]
        healthy = GaugeMetricFamily(
            "qfserve_upstream_healthy", "1 while a remote replica passes its checks.", labels=labels
        )
        outstanding = GaugeMetricFamily(
            "qfserve_upstream_outstanding", "Requests in flight on a remote replica.", labels=labels
        )
        tries = CounterMetricFamily(
            "qfserve_upstream_requests", "Tries sent to a remote replica.", labels=labels
        )
        failures = CounterMetricFamily(
            "qfserve_upstream_failures", "Tries that failed on a remote replica.", labels=labels
        )
        tier_labels = ["endpoint", "tier"]
        tier_budget = GaugeMetricFamily(
            "qfserve_prefix_cache_budget_bytes",
            "The byte budget of a prefix cache tier outside the slots (ram, disk).",
            labels=tier_labels,
        )
        tier_bytes = GaugeMetricFamily(
            "qfserve_prefix_cache_bytes",
            "Bytes of saved KV states a tier holds.",
            labels=tier_labels,
        )
        tier_entries = GaugeMetricFamily(
            "qfserve_prefix_cache_entries", "Saved KV states a tier holds.", labels=tier_labels
        )
        tier_hits = CounterMetricFamily(
            "qfserve_prefix_cache_hits",
            "Admissions whose prompt a tier's saved state covered further than any slot.",
            labels=tier_labels,
        )
        tier_misses = CounterMetricFamily(
            "qfserve_prefix_cache_misses",
            "Admissions for which a tier had no state covering more of the prompt than the slot.",
            labels=tier_labels,
        )
        tier_evictions = CounterMetricFamily(
            "qfserve_prefix_cache_evictions",
            "Saved states a tier dropped to stay within its budget.",
            labels=tier_labels,
        )
        tier_restored = CounterMetricFamily(
            "qfserve_prefix_cache_restored_tokens",
            "Prompt tokens restored from a tier's saved states instead of being prefilled.",
            labels=tier_labels,
        )
        tier_families = [
            tier_budget,
            tier_bytes,
            tier_entries,
            tier_hits,
            tier_misses,
            tier_evictions,
            tier_restored,
        ]
        for name, stats in self._engines.stats().items():
            running.add_metric([name], stats.running)
            waiting.add_metric([name], stats.waiting)
            prompt.add_metric([name], stats.prompt_tokens)
            cached.add_metric([name], stats.cached_prompt_tokens)
            generated.add_metric([name], stats.generated_tokens)
            if stats.kv_pool_cells:
                kv_cells.add_metric([name, "total"], stats.kv_pool_cells)
                kv_cells.add_metric([name, "reserved"], stats.kv_cells_reserved)
                kv_cells.add_metric([name, "cached"], stats.kv_cells_cached)
            for tier in stats.prefix_tiers:
                key = [name, tier.tier]
                tier_budget.add_metric(key, tier.budget_bytes)
                tier_bytes.add_metric(key, tier.bytes)
                tier_entries.add_metric(key, tier.entries)
                tier_hits.add_metric(key, tier.hits)
                tier_misses.add_metric(key, tier.misses)
                tier_evictions.add_metric(key, tier.evictions)
                tier_restored.add_metric(key, tier.restored_tokens)
        for name, replicas in self._engines.replica_stats().items():
            for replica in replicas:
                key = [name, replica.url]
                healthy.add_metric(key, 1 if replica.healthy else 0)
                outstanding.add_metric(key, replica.outstanding)
                tries.add_metric(key, replica.requests)
                failures.add_metric(key, replica.failures)
        return [
            running,
            waiting,
            prompt,
            cached,
            generated,
            kv_cells,
            *tier_families,
            healthy,
            outstanding,
            tries,
            failures,
        ]


class _QuotaCollector(Collector):
    def __init__(self, health: Callable[[], QuotaHealth]) -> None:
        self._health = health

    def collect(self) -> Iterable[Metric]:
        health = self._health()
        yield GaugeMetricFamily(
            "qfserve_quota_store_up",
            "1 while the quota counters' store (Redis, or this process) is reachable.",
            value=1 if health.available else 0,
        )
        yield CounterMetricFamily(
            "qfserve_quota_store_outages",
            "Times the shared quota store became unreachable.",
            value=health.outages,
        )
        yield CounterMetricFamily(
            "qfserve_quota_degraded_requests",
            "Requests decided by the failure policy while the shared quota store was down.",
            value=health.degraded_requests,
        )
