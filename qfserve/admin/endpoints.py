"""The served endpoints as the console shows them: readiness, load and each remote replica's
health, as this gateway process sees them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qfserve.config import Settings
from qfserve.engines.registry import EngineRegistry
from qfserve.engines.remote.pool import ReplicaStats


@dataclass(frozen=True, slots=True)
class EndpointState:
    name: str
    service_name: str
    engine: str
    ready: bool
    running: int
    waiting: int
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    replicas: list[ReplicaStats]


@dataclass(frozen=True, slots=True)
class ServingState:
    status: str  # "ok", "unavailable" or "draining", as /health says
    endpoints: list[EndpointState]


def serving_state(
    settings: Settings, engines: EngineRegistry, draining: Callable[[], bool]
) -> ServingState:
    replicas = engines.replica_stats()
    found = []
    for endpoint in settings.endpoints:
        engine = engines.get(endpoint.name)
        if engine is None:
            continue
        stats = engine.stats()
        found.append(
            EndpointState(
                endpoint.name,
                endpoint.service_name,
                endpoint.engine,
                engine.ready,
                stats.running,
                stats.waiting,
                stats.prompt_tokens,
                stats.cached_prompt_tokens,
                stats.generated_tokens,
                replicas.get(endpoint.name, []),
            )
        )
    status = "draining" if draining() else "ok" if engines.ready else "unavailable"
    return ServingState(status, found)
