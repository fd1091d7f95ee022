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

import aiohttp

from qfserve.engines.remote.wire import CLIENT_ERRORS, AttemptFailed, Failure, translate

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
        self, session: aiohttp.ClientSession, replicas: Sequence[Replica], *, timeout: float
    ) -> None:
        self._session = session
        self._replicas = replicas
        self._timeout = timeout

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(replica) for replica in self._replicas))

    async def check(self, replica: Replica) -> None:
        try:
            status = await self._probe(replica.url + replica.probe_path)
            if status in (404, 405, 501) and replica.probe_path == HEALTH_PATH:
                replica.probe_path = MODELS_PATH
                status = await self._probe(replica.url + MODELS_PATH)
        except AttemptFailed as exc:
            if exc.kind is Failure.TIMEOUT and replica.outstanding:
                return  # busy with our own streams, which say more than a slow probe
            replica.mark(False, f"health check: {exc}")
            return
        replica.mark(200 <= status < 300, f"health check: HTTP {status} on {replica.probe_path}")

    async def _probe(self, url: str) -> int:
        """The status of one GET, its body read so the connection goes back to the pool. A GET
        met by a pooled connection the upstream just closed is sent again by aiohttp itself
        (RFC 9112's retry of idempotent requests), so a stale connection is no failure here."""
        try:
            async with asyncio.timeout(self._timeout), self._session.get(url) as response:
                await response.read()
                return response.status
        # Before TimeoutError: aiohttp's own timeouts (connecting) are TimeoutErrors too.
        except CLIENT_ERRORS as exc:
            raise translate(exc) from exc
        except TimeoutError as exc:
            raise AttemptFailed(Failure.TIMEOUT, "no answer in time") from exc
