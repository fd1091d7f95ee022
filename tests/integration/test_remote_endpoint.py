"""A qfserve with two endpoints from its TOML file: the embedded default, and a remote one backed
by two real llama-cpp-python servers. Both SDKs through the remote endpoint, traffic spread over
the replicas, a replica killed, and the example configurations of the deployment guide."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from qfserve.config import load_settings
from tests.llama_servers import LlamaServer, running_llama_servers
from tests.servers import Server, running_server

pytestmark = [pytest.mark.model, pytest.mark.slow]

DOCS = Path(__file__).parents[2] / "docs" / "examples"


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LlamaServer]]:
    folder = tmp_path_factory.mktemp("upstreams")
    with running_llama_servers(folder) as servers:
        yield servers


@pytest.fixture(scope="module")
def gateway(
    upstreams: list[LlamaServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("gateway")
    config = folder / "qfserve.toml"
    urls = json.dumps([u.url for u in upstreams])
    config.write_text(
        '[[endpoints]]\nname = "llama_2_7b"\n\n'
        '[[endpoints]]\nname = "remote_llama"\nengine = "remote"\n'
        f"upstreams = {urls}\nhealth_interval_seconds = 0.5\ncontext_length = 1024\n"
    )
    with running_server(folder, QFSERVE_CONFIG=str(config)) as server:
        yield server


def upstream_metric(server: Server, name: str) -> dict[str, float]:
    values = {}
    for line in requests.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and 'endpoint="remote_llama"' in line:
            upstream = line.split('upstream="')[1].split('"')[0]
            values[upstream] = float(line.split()[-1])
    return values


def test_both_endpoints_are_served(gateway: Server) -> None:
    health = requests.get(f"{gateway.url}/health", timeout=10).json()
    assert health["endpoints"] == {"llama_2_7b": True, "remote_llama": True}


def test_qianfan_sdk_through_the_remote_endpoint(
    gateway: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import qianfan
    import qianfan.config

    app = gateway.create_app("remote")
    monkeypatch.setenv("QIANFAN_BASE_URL", gateway.url)
    monkeypatch.setenv("QIANFAN_AK", app["api_key"])
    monkeypatch.setenv("QIANFAN_SK", app["secret_key"])
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    try:
        chat = qianfan.ChatCompletion(endpoint="remote_llama")
        reply = chat.do(messages=[{"role": "user", "content": "Say hi."}], max_output_tokens=12)
        assert isinstance(reply, qianfan.QfResponse)
        assert reply["result"].strip()
        assert reply["usage"]["completion_tokens"] > 0
        parts = list(
            chat.do(
                messages=[{"role": "user", "content": "Name two rivers."}],
                stream=True,
                max_output_tokens=24,
            )
        )
        assert parts[-1]["is_end"] is True
        assert "".join(p["result"] for p in parts).strip()
    finally:
        monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)


def test_openai_sdk_through_the_remote_endpoint(gateway: Server) -> None:
    app = gateway.create_app("remote-openai")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.token(app), max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="remote_llama",
            messages=[{"role": "user", "content": "Count to three."}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage is not None


def test_traffic_spreads_and_survives_a_killed_replica(
    gateway: Server, upstreams: list[LlamaServer]
) -> None:
    app = gateway.create_app("spread")
    token = gateway.token(app)

    def ask(**extra: Any) -> dict[str, Any]:
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_output_tokens": 4, **extra}
        return dict(
            requests.post(gateway.chat_url(token, "remote_llama"), json=body, timeout=60).json()
        )

    before = upstream_metric(gateway, "qfserve_upstream_requests_total")
    for _ in range(6):
        assert "error_code" not in ask()
    after = upstream_metric(gateway, "qfserve_upstream_requests_total")
    assert all(after[u.url] - before.get(u.url, 0) >= 1 for u in upstreams), after
    upstreams[0].kill()
    answers = [ask() for _ in range(6)]
    assert all("error_code" not in a for a in answers), answers
    healthy = upstream_metric(gateway, "qfserve_upstream_healthy")
    assert healthy[upstreams[0].url] == 0 and healthy[upstreams[1].url] == 1


def test_deployment_guide_examples_are_valid_settings() -> None:
    for example in sorted(DOCS.glob("*.toml")):
        settings = load_settings(example)
        assert settings.endpoints, example
        for endpoint in settings.endpoints:
            assert endpoint.engine in ("llamacpp", "remote")
