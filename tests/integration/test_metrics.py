"""`GET /metrics` on a real server: the issue's names, and counts that follow real requests."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from qfserve.config import EngineSettings
from tests.servers import Server

pytestmark = pytest.mark.model


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = requests.get(f"{server.url}/metrics", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_requests(server: Server, token: str) -> None:
    before = scrape(server)
    answer = requests.post(
        server.chat_url(token),
        json={"messages": [{"role": "user", "content": "Hi"}], "max_output_tokens": 6},
        timeout=60,
    ).json()
    requests.post(server.chat_url(token, "not_served"), json={"messages": []}, timeout=10)
    requests.post(server.chat_url(token), json={"messages": []}, timeout=10)
    after = scrape(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ep = {"endpoint": "llama_2_7b"}
    assert grew("qfserve_requests_total", error_code="0", **ep) == 1
    assert grew("qfserve_requests_total", error_code="336003", **ep) == 1
    assert grew("qfserve_requests_total", endpoint="unknown", error_code="336005") == 1
    assert grew("qfserve_prompt_tokens_total", **ep) == answer["usage"]["prompt_tokens"]
    assert grew("qfserve_generation_tokens_total", **ep) >= answer["usage"]["completion_tokens"]
    assert grew("qfserve_time_to_first_token_seconds_count", **ep) == 1
    assert grew("qfserve_request_duration_seconds_count", **ep) == 1
    assert grew("qfserve_time_per_output_token_seconds_count", **ep) == 1
    assert value(after, "qfserve_running_sequences", **ep) == 0
    assert value(after, "qfserve_queue_depth", **ep) == 0
    assert ("qfserve_prompt_tokens_cached_total", tuple(ep.items())) in after
    # The prefix cache's RAM tier: its budget is a metric, its counts are there from the start.
    ram = {**ep, "tier": "ram"}
    budget = EngineSettings().cache_ram_mb << 20  # the server's default, on this machine
    assert value(after, "qfserve_prefix_cache_budget_bytes", **ram) == budget
    assert value(after, "qfserve_prefix_cache_bytes", **ram) <= budget
    for name in ("hits", "misses", "evictions", "restored_tokens"):
        assert (f"qfserve_prefix_cache_{name}_total", tuple(sorted(ram.items()))) in after
    assert grew("qfserve_prefix_cache_misses_total", **ram) == 1
    # The KV pool the sequences share: nothing reserved once the answer is done, its tokens
    # cached in the idle slot (beside what earlier tests left in the others).
    total = value(after, "qfserve_kv_cells", state="total", **ep)
    assert total >= 2 * 1024
    assert value(after, "qfserve_kv_cells", state="reserved", **ep) == 0
    cached = value(after, "qfserve_kv_cells", state="cached", **ep)
    assert answer["usage"]["prompt_tokens"] <= cached <= total
