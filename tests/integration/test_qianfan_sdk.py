"""The official `qianfan` SDK, unmodified, pointed at a real qfserve by its environment."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.servers import Server

pytestmark = pytest.mark.model


@pytest.fixture
def qianfan_env(
    server: Server, app: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The SDK configured as a user would: QIANFAN_BASE_URL, QIANFAN_AK and QIANFAN_SK."""
    import qianfan
    import qianfan.config

    monkeypatch.setenv("QIANFAN_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_AK", app["api_key"])
    monkeypatch.setenv("QIANFAN_SK", app["secret_key"])
    monkeypatch.setenv("QIANFAN_LLM_API_RETRY_COUNT", "1")
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)  # re-read the environment
    yield qianfan
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)


def test_sync_chat(qianfan_env: Any) -> None:
    chat = qianfan_env.ChatCompletion(model="Llama-2-7b-chat")
    reply = chat.do(
        messages=[{"role": "user", "content": "Say hello."}], temperature=0.1, max_output_tokens=16
    )
    assert reply["result"].strip()
    assert reply["usage"]["total_tokens"] > reply["usage"]["prompt_tokens"]
    assert {k.lower(): v for k, v in reply.headers.items()}["statement"] == "AI-generated"


def test_endpoint_argument(qianfan_env: Any) -> None:
    chat = qianfan_env.ChatCompletion(endpoint="llama_2_7b")
    reply = chat.do(messages=[{"role": "user", "content": "Hi"}], max_output_tokens=8)
    assert reply["result"].strip()


def test_streaming(qianfan_env: Any) -> None:
    chat = qianfan_env.ChatCompletion(model="Llama-2-7b-chat")
    parts = list(
        chat.do(
            messages=[{"role": "user", "content": "Give three tips for learning to cook."}],
            stream=True,
            temperature=0.1,
            max_output_tokens=96,
        )
    )
    assert len(parts) >= 2
    assert parts[-1]["is_end"] is True
    assert "".join(p["result"] for p in parts).strip()


def test_async_and_async_streaming(qianfan_env: Any) -> None:
    chat = qianfan_env.ChatCompletion(model="Llama-2-7b-chat")

    async def both() -> tuple[Any, list[Any]]:
        plain = await chat.ado(messages=[{"role": "user", "content": "Hi"}], max_output_tokens=8)
        stream = await chat.ado(
            messages=[{"role": "user", "content": "Tell me about tea."}],
            stream=True,
            max_output_tokens=48,
        )
        return plain, [part async for part in stream]

    plain, parts = asyncio.run(both())
    assert plain["result"].strip()
    assert parts[-1]["is_end"] is True


def test_multi_turn_with_qfmessages(qianfan_env: Any) -> None:
    chat = qianfan_env.ChatCompletion(model="Llama-2-7b-chat")
    messages = qianfan_env.Messages()
    messages.append("My favourite fruit is the mango.")
    first = chat.do(messages=messages, max_output_tokens=24)
    messages.append(first)
    messages.append("Which fruit did I say?")
    second = chat.do(messages=messages, max_output_tokens=24)
    assert second["result"].strip()
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]


def test_completion(qianfan_env: Any) -> None:
    by_model = qianfan_env.Completion(model="Llama-2-7b-chat").do(
        prompt="Hello", max_output_tokens=8
    )
    by_endpoint = qianfan_env.Completion(endpoint="llama_2_7b").do(
        prompt="Hello", max_output_tokens=8
    )
    assert by_model["result"].strip() and by_endpoint["result"].strip()


def test_sdk_error_is_raised_with_the_code(qianfan_env: Any) -> None:
    from qianfan.errors import APIError

    chat = qianfan_env.ChatCompletion(endpoint="llama_2_7b")
    with pytest.raises(APIError) as raised:
        chat.do(messages=[{"role": "user", "content": "Hi"}], temperature=5)
    assert raised.value.error_code == 336003


def test_access_token_mode(server: Server, token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import qianfan
    import qianfan.config

    monkeypatch.setenv("QIANFAN_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_ACCESS_TOKEN", token)
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    try:
        reply = qianfan.ChatCompletion(model="Llama-2-7b-chat").do(
            messages=[{"role": "user", "content": "Hi"}], max_output_tokens=8
        )
        assert isinstance(reply, qianfan.QfResponse)
        assert reply["result"].strip()
    finally:
        monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)


def test_requests_as_on_the_page(server: Server, app: dict[str, str]) -> None:
    """The page's own `requests` example, step by step: get a token, then chat."""
    url = (
        f"{server.url}/oauth/2.0/token?grant_type=client_credentials"
        f"&client_id={app['api_key']}&client_secret={app['secret_key']}"
    )
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    token = requests.request("POST", url, headers=headers, data="", timeout=30).json()[
        "access_token"
    ]
    chat_url = (
        f"{server.url}/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/llama_2_7b?access_token={token}"
    )
    payload = (
        '{"messages": [{"role": "user", "content": "介绍一下你自己"}], "max_output_tokens": 32}'
    )
    reply = requests.request(
        "POST", chat_url, headers={"Content-Type": "application/json"}, data=payload, timeout=60
    )
    assert reply.json()["result"].strip()


def test_iam_signature_mode(
    server: Server, app: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """QIANFAN_ACCESS_KEY/QIANFAN_SECRET_KEY: every request signed with bce-auth-v1, after the SDK
    has listed the served models on the console base URL."""
    import json

    import qianfan
    import qianfan.config

    from tests.servers import qfserve

    keys = json.loads(
        qfserve("app", "iam-key", str(app["app_id"]), "--json", env=server.env).stdout
    )
    monkeypatch.setenv("QIANFAN_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", server.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", keys["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", keys["secret_key"])
    monkeypatch.setenv("QIANFAN_LLM_API_RETRY_COUNT", "1")
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    try:
        services = qianfan.resources.console.service.Service.list()
        names = [s["name"] for s in services["result"]["common"]]
        assert "Llama-2-7b-chat" in names
        chat = qianfan.ChatCompletion(model="Llama-2-7b-chat")
        reply = chat.do(messages=[{"role": "user", "content": "Hi"}], max_output_tokens=8)
        assert isinstance(reply, qianfan.QfResponse) and reply["result"]
        parts = list(
            chat.do(messages=[{"role": "user", "content": "Hi"}], stream=True, max_output_tokens=8)
        )
        assert parts[-1]["is_end"] is True
        monkeypatch.setenv("QIANFAN_SECRET_KEY", "0" * 32)
        monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
        from qianfan.errors import APIError

        with pytest.raises(APIError) as raised:
            qianfan.ChatCompletion(endpoint="llama_2_7b").do(
                messages=[{"role": "user", "content": "Hi"}], max_output_tokens=8
            )
        assert raised.value.error_code == 14
    finally:
        monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
