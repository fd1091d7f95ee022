"""A request's clock: its endpoint's series, and the first token observed off the token's path."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from qfserve.metrics import Metrics


def metrics() -> Metrics:
    engines: Any = SimpleNamespace(names=lambda: ["a"], stats=dict, replica_stats=dict)
    return Metrics(engines)


def observed(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(f"{name}_count", {"endpoint": "a"})
    return value or 0.0


def test_clocks_of_an_endpoint_share_its_series() -> None:
    served = metrics()
    assert served.clock("a").series is served.clock("a").series


def test_the_first_token_is_observed_once_the_step_that_sends_it_is_done() -> None:
    async def scenario() -> None:
        served = metrics()
        clock = served.clock("a")
        clock.tokens(0)
        clock.tokens(1)
        assert observed(served, "qfserve_time_to_first_token_seconds") == 0
        await asyncio.sleep(0)
        assert observed(served, "qfserve_time_to_first_token_seconds") == 1
        clock.tokens(1)
        clock.finish(3)
        clock.finish(3)
        await asyncio.sleep(0)
        assert observed(served, "qfserve_time_to_first_token_seconds") == 1
        assert observed(served, "qfserve_request_duration_seconds") == 1
        assert observed(served, "qfserve_time_per_output_token_seconds") == 1

    asyncio.run(scenario())


def test_without_an_event_loop_the_first_token_is_observed_at_once() -> None:
    served = metrics()
    served.clock("a").tokens(2)
    assert observed(served, "qfserve_time_to_first_token_seconds") == 1
