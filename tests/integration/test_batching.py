"""The embedded engine behind a real server: concurrency, cancellation, overload, prefix cache,
each seen from outside (answers, /metrics)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import Server, running_server
from tests.waiting import wait_until

pytestmark = pytest.mark.model

GREEDY = {"temperature": 0.01, "top_k": 1, "seed": 42, "max_output_tokens": 24}
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "What is 12 times 12?",
    "Give one tip for sleeping well.",
    "What is water made of?",
    "Who wrote Romeo and Juliet?",
]


def metric(server: Server, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("endpoint") == "llama_2_7b":
                return float(sample.value)
    raise AssertionError(f"{name} not found")


def ask(server: Server, token: str, question: str, **extra: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": question}], **GREEDY, **extra}
    return dict(requests.post(server.chat_url(token), json=body, timeout=120).json())


def test_concurrent_answers_match_sequential_ones(tmp_path: Path) -> None:
    # A context of its own per sequence (the KV cache not shared): the batched logits of these
    # short prompts equal solo ones. In a shared pool they do not; there, which attention kernel
    # runs depends on the batch and on where the sequences' cells lie.
    with running_server(
        tmp_path, QFSERVE_ENGINE__CONTEXT_LENGTH="1024", QFSERVE_ENGINE__KV_CACHE_TOKENS="8192"
    ) as server:
        token = server.token(server.create_app("batching"))
        alone = [ask(server, token, q)["result"] for q in QUESTIONS]
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            together = list(pool.map(lambda q: ask(server, token, q)["result"], QUESTIONS))
    # Compare a prefix all the same (see the notes: batched float arithmetic need not be
    # bit-identical).
    for solo, batched in zip(alone, together, strict=True):
        assert solo[:40] == batched[:40]


def test_disconnected_streams_free_their_sequences(server: Server, token: str) -> None:
    body = {
        "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "temperature": 1.0,
        "max_output_tokens": 2048,
        "stream": True,
    }
    replies = [
        requests.post(server.chat_url(token), json=body, stream=True, timeout=60) for _ in range(4)
    ]
    for reply in replies:
        assert next(reply.iter_lines()).startswith(b"data: ")
    assert metric(server, "qfserve_running_sequences") >= 1
    for reply in replies:
        reply.close()
    wait_until(
        lambda: metric(server, "qfserve_running_sequences") == 0,
        what="no sequence running after their clients left",
    )


def test_prefix_cache_serves_the_next_turn(server: Server, token: str) -> None:
    first_turn = [{"role": "user", "content": "Tell me about the history of tea in China. " * 8}]
    cached_before = metric(server, "qfserve_prompt_tokens_cached_total")
    one = requests.post(server.chat_url(token), json={"messages": first_turn, **GREEDY}, timeout=60)
    first = one.json()
    turns = [
        *first_turn,
        {"role": "assistant", "content": first["result"]},
        {"role": "user", "content": "And in Japan?"},
    ]
    requests.post(server.chat_url(token), json={"messages": turns, **GREEDY}, timeout=60)
    cached = metric(server, "qfserve_prompt_tokens_cached_total") - cached_before
    # The second turn's prompt starts with the first turn's prompt: those tokens are not prefilled.
    assert cached >= first["usage"]["prompt_tokens"] - 1


@pytest.mark.slow
def test_overload_gives_336100_then_recovers(tmp_path: Path) -> None:
    with running_server(
        tmp_path,
        QFSERVE_ENGINE__N_PARALLEL="1",
        QFSERVE_ENGINE__MAX_WAITING="1",
    ) as small:
        token = small.token(small.create_app("overload"))
        long = {"max_output_tokens": 200, "temperature": 1.0}
        with ThreadPoolExecutor(5) as pool:
            codes = list(
                pool.map(lambda q: ask(small, token, q, **long).get("error_code", 0), QUESTIONS[:5])
            )
        assert codes.count(336100) >= 2, codes  # one running, one waiting, the rest refused
        assert codes.count(0) >= 2
        assert metric(small, "qfserve_queue_depth") == 0
        assert "error_code" not in ask(small, token, "Hi", max_output_tokens=4)
