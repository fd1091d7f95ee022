"""Qianfan V2 (`/v2/chat/completions`, `/v2/models`) on a real server and the bundled model, driven
by the unmodified `openai` and `qianfan` SDKs as their users configure them: answers plain and
streamed, safety flags, cached prompt tokens, errors with real statuses, the `appid` header and
the rate-limit quotas."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from tests.servers import Server, qfserve, running_server

pytestmark = pytest.mark.model

MODEL = "llama_2_7b"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
# The bundled model's answer to this names the city: the extra list below flags it.
FRANCE: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
]
FLAGGED_QUESTION = "Where is a 网络赌博 site?"  # gambling.txt


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's own server: an extra safety list lets a test flag an answer."""
    lists = tmp_path_factory.mktemp("v2-lists") / "places.txt"
    lists.write_text("paris\n")
    with running_server(tmp_path_factory.mktemp("v2"), QFSERVE_SAFETY_LISTS=str(lists)) as running:
        yield running


def cli(server: Server, *args: str) -> Any:
    return json.loads(qfserve(*args, env=server.env).stdout)


def new_app(server: Server, name: str) -> tuple[str, str]:
    """A new app's id and a V2 API key for it."""
    app_id = str(server.create_app(name)["app_id"])
    created = cli(server, "app", "v2-key", "create", app_id, "--json")
    return app_id, str(created["api_key"])


@pytest.fixture(scope="module")
def v2_app(server: Server) -> tuple[str, str]:
    return new_app(server, "v2")


@pytest.fixture(scope="module")
def client(server: Server, v2_app: tuple[str, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v2", api_key=v2_app[1], max_retries=0)


def extras(model: Any) -> dict[str, Any]:
    return dict(model.model_extra or {})


def ask(
    client: openai.OpenAI,
    messages: list[ChatCompletionMessageParam],
    max_tokens: int = 12,
    **extra: Any,
) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0.01, **extra
    )


# --- the openai SDK ------------------------------------------------------------------------


def test_models_lists_the_endpoint(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert MODEL in models
    assert models[MODEL].object == "model" and models[MODEL].owned_by
    assert extras(models[MODEL])["context_length"] > 0  # the embedded engine knows it


def test_plain_answer(client: openai.OpenAI) -> None:
    reply: ChatCompletion = ask(
        client,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
    )
    assert reply.id.startswith("as-") and reply.object == "chat.completion"
    assert reply.model == MODEL
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert extras(choice) == {"flag": 0, "ban_round": -1}
    usage = reply.usage
    assert usage is not None and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens is not None
    assert 0 <= usage.prompt_tokens_details.cached_tokens <= usage.prompt_tokens


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        ask(
            client,
            [{"role": "user", "content": "Count to five."}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id.startswith("as-") for c in chunks)
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text.strip()
    assert all(extras(c.choices[0]) == {"flag": 0, "ban_round": -1} for c in with_choices)
    finishes = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert with_choices[-1].choices[0].finish_reason is not None
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert 0 < last.usage.completion_tokens <= 12
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens is not None


def test_stream_on_the_wire_ends_with_done(server: Server, v2_app: tuple[str, str]) -> None:
    """The events as Qianfan sends them, then `data: [DONE]`. Only the usage chunk has a `usage`
    field: the qianfan SDK's async stream calls `.get` on `body.get("usage", {})` of every chunk,
    so `"usage": null` would crash it."""
    reply = requests.post(
        f"{server.url}/v2/chat/completions",
        json={
            "model": MODEL,
            "messages": HI,
            "max_tokens": 8,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers={"Authorization": f"Bearer {v2_app[1]}"},
        stream=True,
        timeout=60,
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in reply.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all("usage" not in e for e in events[:-1])
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] > 0


def test_errors_are_openai_exceptions(server: Server, client: openai.OpenAI) -> None:
    wrong = openai.OpenAI(
        base_url=f"{server.url}/v2",
        api_key="bce-v3/ALTAK-" + "x" * 20 + "/" + "0" * 40,
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError) as unauthorised:
        wrong.chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
    assert unauthorised.value.status_code == 401
    assert unauthorised.value.code == "invalid_iam_token"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()

    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(model="no_such_model", messages=HI, max_tokens=4)
    assert unknown.value.status_code == 400 and unknown.value.code == "invalid_model"

    with pytest.raises(openai.BadRequestError) as json_mode:
        client.chat.completions.create(
            model=MODEL,
            messages=HI,
            max_tokens=4,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "[a-z]+"}},
            },
        )
    assert json_mode.value.status_code == 400 and json_mode.value.code == "invalid_argument"
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": ""}])
    assert empty.value.code == "invalid_messages"

    body = json_mode.value.response.json()
    assert body["id"].startswith("as-") and body["error"]["type"]
    assert "response_format" in body["error"]["message"]


# --- the appid header ----------------------------------------------------------------------


def test_appid_header(server: Server, v2_app: tuple[str, str]) -> None:
    app_id, key = v2_app
    right = openai.OpenAI(
        base_url=f"{server.url}/v2", api_key=key, max_retries=0, default_headers={"appid": app_id}
    )
    assert ask(right, HI, max_tokens=4).choices[0].message.content is not None

    reply = requests.post(
        f"{server.url}/v2/chat/completions",
        json={"model": MODEL, "messages": HI, "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}", "appid": str(int(app_id) + 1000)},
        timeout=60,
    )
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "invalid_appid"


# --- safety flags --------------------------------------------------------------------------


def test_flagged_question(client: openai.OpenAI) -> None:
    reply = ask(client, [{"role": "user", "content": FLAGGED_QUESTION}])
    (choice,) = reply.choices
    assert choice.finish_reason == "content_filter"
    assert extras(choice) == {"flag": 2, "ban_round": -1}
    assert choice.message.content  # the refusal
    assert reply.usage.completion_tokens == 0

    chunks = list(ask(client, [{"role": "user", "content": FLAGGED_QUESTION}], stream=True))
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert extras(chunks[-1].choices[0]) == {"flag": 2, "ban_round": -1}


def test_flagged_history_message_gives_its_round(client: openai.OpenAI) -> None:
    history: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": FLAGGED_QUESTION},
        {"role": "assistant", "content": "OK."},
        {"role": "user", "content": "What is two plus two?"},
    ]
    (choice,) = ask(client, history).choices
    assert choice.finish_reason == "content_filter"
    assert extras(choice) == {"flag": 2, "ban_round": 2}


def test_flagged_answer(client: openai.OpenAI) -> None:
    plain = ask(client, FRANCE, max_tokens=16)
    (choice,) = plain.choices
    assert choice.finish_reason == "content_filter"
    assert extras(choice) == {"flag": 3, "ban_round": -1}
    assert "paris" not in (choice.message.content or "").lower()

    chunks = list(ask(client, FRANCE, max_tokens=16, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "paris" not in text.lower()
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert extras(chunks[-1].choices[0]) == {"flag": 4, "ban_round": -1}
    assert all(extras(c.choices[0])["flag"] == 0 for c in chunks[:-1])


# --- the prefix cache ----------------------------------------------------------------------


def test_second_turn_reports_cached_tokens(client: openai.OpenAI) -> None:
    conversation: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are a helpful assistant who answers briefly."},
        {"role": "user", "content": "Name three colours of the rainbow."},
    ]
    first = ask(client, conversation)
    conversation += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And one more?"},
    ]
    second = ask(client, conversation)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens
    assert cached >= first.usage.prompt_tokens // 2


# --- quotas --------------------------------------------------------------------------------


@pytest.mark.slow
def test_rpm_quota_is_429_with_v2_headers(server: Server) -> None:
    app_id, key = new_app(server, "v2-rpm")
    cli(server, "app", "quota", app_id, "--rpm", "1")
    limited = openai.OpenAI(base_url=f"{server.url}/v2", api_key=key, max_retries=0)
    admitted = limited.chat.completions.with_raw_response.create(
        model=MODEL, messages=HI, max_tokens=2
    )
    names = (
        "X-Ratelimit-Limit-Requests",
        "X-Ratelimit-Limit-Input-Tokens",
        "X-Ratelimit-Limit-Output-Tokens",
        "X-Ratelimit-Remaining-Requests",
        "X-Ratelimit-Remaining-Input-Tokens",
        "X-Ratelimit-Remaining-Output-Tokens",
    )
    assert all(name in admitted.headers for name in names), dict(admitted.headers)
    assert admitted.headers["X-Ratelimit-Limit-Requests"] == "1"
    assert admitted.headers["X-Ratelimit-Remaining-Requests"] == "0"

    with pytest.raises(openai.RateLimitError) as refused:
        limited.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert refused.value.status_code == 429
    assert refused.value.code == "rpm_rate_limit_exceeded"
    assert refused.value.type == "rate_limit_exceeded"
    headers = refused.value.response.headers
    assert all(name in headers for name in names), dict(headers)
    assert headers["X-Ratelimit-Remaining-Requests"] == "0"


# --- the qianfan SDK -----------------------------------------------------------------------

# Run in a child process: the SDK reads its configuration from the environment once, and keeps
# credentials and tokens in process-wide managers.
SDK_DRIVER = r"""
import asyncio, json, sys
import qianfan

how, out = sys.argv[1], {}
messages = [{"role": "user", "content": "Say hello."}]
try:
    if how == "ChatCompletion":
        chat = qianfan.ChatCompletion(version="2", model="llama_2_7b")
        plain = chat.do(messages=messages, max_tokens=8, temperature=0.01)
        parts = list(chat.do(messages=messages, max_tokens=8, stream=True))
        out = {"plain": plain.body, "parts": [p.body for p in parts]}

        async def streamed():
            parts = await chat.ado(
                messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True}
            )
            return [p.body async for p in parts]

        out["async_parts"] = asyncio.run(streamed())
    else:
        client = qianfan.Qianfan()
        create = client.chat.completions.create
        plain = create(model="llama_2_7b", messages=messages, max_tokens=8)
        parts = list(create(model="llama_2_7b", messages=messages, max_tokens=8, stream=True))
        out = {"plain": plain.raw, "parts": [p.raw for p in parts]}
    qianfan.ChatCompletion(version="2", model="no_such_model").do(messages=messages)
except qianfan.errors.RequestError as exc:  # what the SDK raises for any status but 200
    out["error"] = {"status": exc.status_code, "says": str(exc)}
print(json.dumps(out))
"""


def run_sdk(server: Server, how: str, **env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    child_env = {
        **clean,
        "QIANFAN_CONSOLE_API_BASE_URL": server.url,
        "QIANFAN_IAM_BASE_URL": server.url,
        "QIANFAN_LLM_API_RETRY_COUNT": "1",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", SDK_DRIVER, how],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.splitlines()[-1]))


def check_sdk_answers(answers: dict[str, Any]) -> None:
    plain = answers["plain"]
    assert plain["object"] == "chat.completion"
    (choice,) = plain["choices"]
    assert choice["message"]["content"] and choice["flag"] == 0
    assert plain["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0
    check_sdk_stream(answers["parts"])
    if "async_parts" in answers:  # the SDK's async stream parses each chunk its own way
        check_sdk_stream(answers["async_parts"])
        assert answers["async_parts"][-1]["usage"]["completion_tokens"] > 0
    assert answers["error"]["status"] == 400 and "invalid_model" in answers["error"]["says"]


def check_sdk_stream(parts: list[dict[str, Any]]) -> None:
    text = "".join(c["delta"].get("content") or "" for p in parts for c in p["choices"])
    assert text.strip()
    assert [c["finish_reason"] for p in parts for c in p["choices"] if c["finish_reason"]] in (
        ["stop"],
        ["length"],
    )


@pytest.mark.slow
def test_qianfan_sdk_with_an_api_key(server: Server, v2_app: tuple[str, str]) -> None:
    app_id, key = v2_app
    check_sdk_answers(run_sdk(server, "ChatCompletion", QIANFAN_BEARER_TOKEN=key))
    # The app id configured: the SDK sends it as the `appid` header.
    check_sdk_answers(run_sdk(server, "Qianfan", QIANFAN_BEARER_TOKEN=key, QIANFAN_APP_ID=app_id))
    wrong = str(int(app_id) + 1000)
    refused = run_sdk(server, "Qianfan", QIANFAN_BEARER_TOKEN=key, QIANFAN_APP_ID=wrong)
    assert set(refused) == {"error"} and refused["error"]["status"] == 401
    assert "invalid_appid" in refused["error"]["says"]


@pytest.mark.slow
def test_qianfan_sdk_with_iam_keys(server: Server, v2_app: tuple[str, str]) -> None:
    """With IAM AK/SK and no key, the SDK first mints a bearer token at `/v1/BCE-BEARER/token`."""
    iam = cli(server, "app", "iam-key", v2_app[0], "--json")
    keys = {"QIANFAN_ACCESS_KEY": iam["access_key"], "QIANFAN_SECRET_KEY": iam["secret_key"]}
    assert minted_tokens(server, v2_app[0]) == 0
    check_sdk_answers(run_sdk(server, "ChatCompletion", **keys))
    after_first = minted_tokens(server, v2_app[0])
    assert after_first >= 1  # the SDK's resource objects each fetch their own
    check_sdk_answers(run_sdk(server, "Qianfan", **keys))
    assert minted_tokens(server, v2_app[0]) > after_first


def minted_tokens(server: Server, app_id: str) -> int:
    with closing(sqlite3.connect(server.data_dir / "qfserve.db")) as db:
        query = "SELECT count(*) FROM v2_keys WHERE app_id = ? AND expires_at IS NOT NULL"
        return int(db.execute(query, (int(app_id),)).fetchone()[0])
