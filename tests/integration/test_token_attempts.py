"""The token route under a burst of wrong secrets: memory stays bounded, the failure limit holds,
and other apps still log in. A private server: the burst uses up loopback's failures."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.servers import Server, running_server

pytestmark = [pytest.mark.model, pytest.mark.slow]

MiB = 2**20
CHECK_THREADS = 2
PER_CLIENT_ID = 10
PER_ADDRESS = 30
# Two checking threads hold at most 2 x 16 MiB of scrypt at once, and their two malloc arenas
# keep about as much after it; the rest is room for 100 connections and allocator noise. The
# unbounded route grew by about 800 MiB on this burst.
MAX_GROWTH = 150 * MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("attempts"),
        QFSERVE_AUTH__SECRET_CHECK_THREADS=str(CHECK_THREADS),
        QFSERVE_AUTH__MAX_FAILURES_PER_CLIENT_ID=str(PER_CLIENT_ID),
        QFSERVE_AUTH__MAX_FAILURES_PER_ADDRESS=str(PER_ADDRESS),
    ) as running:
        yield running


class PeakRss:
    """Polls a process's resident memory in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def now(self) -> int:
        return int(self._process.memory_info().rss)

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def token_request(server: Server, client_id: str, secret: str) -> requests.Response:
    return requests.post(
        f"{server.url}/oauth/2.0/token",
        params={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
        },
        timeout=120,
    )


def burst(server: Server, client_ids: list[str], secret: str) -> Counter[int]:
    with ThreadPoolExecutor(100) as pool:
        replies = list(pool.map(lambda c: token_request(server, c, secret), client_ids))
    for reply in replies:
        if reply.status_code == 429:
            assert reply.json()["error"] == "invalid_client"
            assert "too many failed attempts" in reply.json()["error_description"]
            assert 1 <= int(reply.headers["Retry-After"]) <= 60
    return Counter(reply.status_code for reply in replies)


def test_wrong_secrets_in_a_burst(server: Server) -> None:
    attacked, bystander = server.create_app("attacked"), server.create_app("bystander")
    server.token(attacked)
    assert server.process is not None
    with PeakRss(server.process.pid) as rss:
        before = rss.now()
        statuses = burst(server, [attacked["api_key"]] * 300, "wrong")
    after = rss.now()
    print(f"RSS {before / MiB:.0f} MiB, peak {rss.peak / MiB:.0f}, after {after / MiB:.0f}")

    # Checks already queued when the limit is reached may still run, one per checking thread.
    assert PER_CLIENT_ID <= statuses[401] < PER_CLIENT_ID + CHECK_THREADS
    assert statuses[429] == 300 - statuses[401]
    assert rss.peak - before < MAX_GROWTH
    assert after - before < MAX_GROWTH

    # The attacked client id waits for its window to end; every other app logs in as before.
    assert token_request(server, attacked["api_key"], attacked["secret_key"]).status_code == 429
    assert server.token(bystander)

    # Unknown client ids count against the address, whatever ids are tried.
    guesses = burst(server, [f"guess-{n}" for n in range(100)], "x")
    assert PER_ADDRESS - statuses[401] <= guesses[401] < PER_ADDRESS - statuses[401] + CHECK_THREADS
    assert guesses[429] == 100 - guesses[401]
    refused = token_request(server, bystander["api_key"], bystander["secret_key"])
    assert refused.status_code == 429
