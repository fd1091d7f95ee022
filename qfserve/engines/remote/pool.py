"""The upstream replicas: their state, the routing choice, and the active health checks.

Everything here runs on the event loop, so the counters need no lock; `ReplicaStats` snapshots
are what other threads (a /metrics scrape) get to see.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

import httpx

from qfserve.engines.remote.wire import STALE_CONNECTION

log = logging.getLogger(__name__)

HEALTH_PATH: Final = "/health"
MODELS_PATH: Final = "/v1/models"


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    url: str
    healthy: bool
    outstanding: int  # requests in flight now
    requests: int  # tries sent since start, failover tries included
    failures: int  # tries that failed: connection, timeout, 5xx, 429, or an error mid-stream


@dataclass(eq=False, slots=True)
class Replica:
    url: str  # the base URL, without a trailing "/" or "/v1"
    healthy: bool = False
    outstanding: int = 0
    requests: int = 0
    failures: int = 0
    # vLLM, SGLang, TGI and llama-server answer /health; llama-cpp-python's server has no such
    # route, so a 404 there switches this replica to /v1/models for good.
    probe_path: str = HEALTH_PATH

    def snapshot(self) -> ReplicaStats:
        return ReplicaStats(self.url, self.healthy, self.outstanding, self.requests, self.failures)

    def mark(self, healthy: bool, reason: str) -> None:
        if healthy and not self.healthy:
            log.info("upstream %s is up", self.url)
        elif not healthy and self.healthy:
            log.warning("upstream %s is down: %s", self.url, reason)
        self.healthy = healthy


def base_url(url: str) -> str:
    """Accept "http://host:8000", ".../" and ".../v1" alike: the paths we add start at /v1."""
    url = url.strip().rstrip("/")
    return url.removesuffix("/v1")


def choose(replicas: Sequence[Replica], tried: Collection[Replica], turn: int) -> Replica | None:
    """The healthy, untried replica with the fewest requests in flight; `turn` (a counter the
    caller advances per choice) rotates among those tied, so an idle pool is used round robin."""
    candidates = [r for r in replicas if r.healthy and r not in tried]
    if not candidates:
        return None
    least = min(r.outstanding for r in candidates)
    tied = [r for r in candidates if r.outstanding == least]
    return tied[turn % len(tied)]


class HealthChecker:
    """Probes every replica on a timer. A replica is up after a good answer (2xx) and down after
    a bad one, a connection failure, or a timeout while it has nothing of ours in flight: a busy
    llama-cpp-python server answers /v1/models only between generations, so a slow probe there
    says nothing about its health while our own streams on it are flowing."""

    def __init__(
        self, client: httpx.AsyncClient, replicas: Sequence[Replica], *, timeout: float
    ) -> None:
        self._client = client
        self._replicas = replicas
        self._timeout = httpx.Timeout(timeout)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(replica) for replica in self._replicas))

    async def check(self, replica: Replica) -> None:
        try:
            response = await self._get(replica, replica.probe_path)
            if response.status_code in (404, 405, 501) and replica.probe_path == HEALTH_PATH:
                replica.probe_path = MODELS_PATH
                response = await self._get(replica, MODELS_PATH)
        except httpx.ConnectTimeout as exc:
            replica.mark(False, f"health check: {exc!r}")
            return
        except httpx.TimeoutException as exc:
            if replica.outstanding == 0:
                replica.mark(False, f"health check: {exc!r}")
            return
        except httpx.HTTPError as exc:
            replica.mark(False, f"health check: {exc!r}")
            return
        replica.mark(
            response.is_success,
            f"health check: HTTP {response.status_code} on {replica.probe_path}",
        )

    async def _get(self, replica: Replica, path: str) -> httpx.Response:
        # A stale connection says nothing about the replica: probe again, on a new one.
        try:
            return await self._client.get(replica.url + path, timeout=self._timeout)
        except STALE_CONNECTION:
            return await self._client.get(replica.url + path, timeout=self._timeout)
