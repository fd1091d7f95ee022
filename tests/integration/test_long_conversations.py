"""A conversation of many short messages stalls no one: /health keeps answering while one is
refused for its length and another is answered with its history forgotten."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from tests.servers import Server, running_server

pytestmark = [pytest.mark.model, pytest.mark.slow]

# A small context keeps the answer's prefill short; a few hundred messages still overflow it.
CONTEXT = 512
MAX_OUTPUT_TOKENS = 4


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("qfserve")
    with running_server(data_dir, QFSERVE_ENGINE__CONTEXT_LENGTH=str(CONTEXT)) as running:
        yield running


@dataclass
class HealthPoller:
    """GET /health back to back in a thread, timing each answer."""

    url: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    status = session.get(self.url, timeout=10).status_code
                except requests.RequestException as error:
                    self.failures.append(repr(error))
                else:
                    if status != 200:
                        self.failures.append(f"HTTP {status}")
                self.latencies.append(time.monotonic() - started)
                self.stop.wait(0.02)  # pacing, not synchronisation


@contextmanager
def polling_health(server: Server) -> Iterator[HealthPoller]:
    poller = HealthPoller(f"{server.url}/health")
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    try:
        yield poller
    finally:
        poller.stop.set()
        thread.join(timeout=30)


def conversation(count: int) -> list[dict[str, str]]:
    # One character each: the whole history fits the 2,000-character limit, so only the
    # model's context makes rounds go.
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "abcdefghij"[i % 10]}
        for i in range(count)
    ]


def chat(server: Server, token: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    reply = requests.post(
        server.chat_url(token),
        json={"messages": messages, "max_output_tokens": MAX_OUTPUT_TOKENS, "temperature": 0.1},
        timeout=120,
    )
    assert reply.status_code == 200
    body: dict[str, Any] = reply.json()
    return body


def test_long_conversations_stall_no_one(small_server: Server) -> None:
    server = small_server
    token = server.token(server.create_app("long"))
    answers: list[dict[str, Any]] = []
    with polling_health(server) as poller:
        # Within the limit, but far too long for the context: answered with the history
        # forgotten down to what fits.
        within = threading.Thread(
            target=lambda: answers.append(chat(server, token, conversation(999)))
        )
        within.start()
        # Past the limit, sent while the other is prepared or answered: refused at once.
        started = time.monotonic()
        refused = chat(server, token, conversation(10_001))
        took = time.monotonic() - started
        within.join(timeout=120)
        assert not within.is_alive()
    assert refused.get("error_code") == 336003, refused
    assert refused["error_msg"] == "the number of messages must not exceed 1000"
    assert took < 5.0, f"the refusal took {took:.2f} s"

    [answered] = answers
    assert "error_code" not in answered, answered
    usage = answered["usage"]
    assert usage["completion_tokens"] >= 1
    # As much history as fits is kept: a round of one-character messages is a few tokens.
    assert usage["prompt_tokens"] > CONTEXT - MAX_OUTPUT_TOKENS - 40
    assert usage["prompt_tokens"] <= CONTEXT - MAX_OUTPUT_TOKENS

    assert not poller.failures
    assert len(poller.latencies) >= 5, "/health was hardly polled while the requests ran"
    slowest = max(poller.latencies)
    assert slowest < 1.0, f"/health took {slowest:.2f} s while the requests ran"
