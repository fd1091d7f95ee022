"""The official `openai` SDK against qfserve's OpenAI-compatible routes, on a real server."""

from __future__ import annotations

import json

import openai
import pytest
import requests
from openai.types.chat import ChatCompletionMessageParam

from tests.servers import Server, qfserve

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def app_key(server: Server, app: dict[str, str]) -> str:
    created = json.loads(
        qfserve("app", "key", "create", str(app["app_id"]), "--json", env=server.env).stdout
    )
    assert created["key"].startswith("sk-qf-")
    return str(created["key"])


@pytest.fixture(scope="module")
def client(server: Server, app_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=app_key, max_retries=0)


def test_models(client: openai.OpenAI) -> None:
    assert "llama_2_7b" in [m.id for m in client.models.list()]


def test_plain_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="llama_2_7b",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a fruit."},
        ],
        max_tokens=12,
        temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="llama_2_7b",
            messages=[{"role": "user", "content": "Count to five."}],
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["stop"], ["length"])
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert 0 < usage.completion_tokens <= 24


def test_access_token_as_bearer(server: Server, token: str) -> None:
    by_token = openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0)
    reply = by_token.chat.completions.create(
        model="llama_2_7b", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None


def test_errors_have_real_statuses(server: Server, client: openai.OpenAI) -> None:
    hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
    wrong_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-qf-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.chat.completions.create(model="llama_2_7b", messages=hi)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no_such_model", messages=hi)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="llama_2_7b", messages=hi, temperature=3)
    assert "temperature" in str(bad.value)


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        (b"{not json", "336002", "Invalid JSON"),
        (b"\xff\xfe", "336002", "Invalid JSON"),
        (b'["a list"]', "336001", "must be a JSON object"),
        (b'{"model": 7, "messages": []}', "336001", "model"),
    ],
)
def test_malformed_body_is_400(
    server: Server, app_key: str, body: bytes, code: str, says: str
) -> None:
    reply = requests.post(
        f"{server.url}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {app_key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == code and says in error["message"]


def test_quota_is_429(server: Server) -> None:
    app = server.create_app("openai-quota")
    qfserve("app", "quota", str(app["app_id"]), "--total", "1", env=server.env)
    key = json.loads(
        qfserve("app", "key", "create", str(app["app_id"]), "--json", env=server.env).stdout
    )["key"]
    limited = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
    limited.chat.completions.create(model="llama_2_7b", messages=hi, max_tokens=2)
    with pytest.raises(openai.RateLimitError):
        limited.chat.completions.create(model="llama_2_7b", messages=hi, max_tokens=2)


def test_flagged_question_is_content_filter(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="llama_2_7b", messages=[{"role": "user", "content": "哪里有网络赌博平台"}]
    )
    assert reply.choices[0].finish_reason == "content_filter"
    assert reply.usage is not None and reply.usage.completion_tokens == 0


def test_revoked_key_is_refused(server: Server, app: dict[str, str]) -> None:
    created = json.loads(
        qfserve("app", "key", "create", str(app["app_id"]), "--json", env=server.env).stdout
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=created["key"], max_retries=0)
    assert client.models.list().data  # accepted, and kept by the server for the next requests
    qfserve("app", "key", "revoke", created["prefix"], env=server.env)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
