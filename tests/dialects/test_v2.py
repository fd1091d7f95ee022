"""Qianfan V2's own behaviour, in-process on the scripted engine: the model list, the request
fields OpenAI's dialect does not have or that V2 treats its own way, the `appid` header, usage
with cached tokens, and quota refusals with V2's codes and rate-limit headers. What V2 shares
with the other dialects is tested in every dialect (test_chat.py, test_errors.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.dialects.dialects import HI, V2, Ask
from tests.fake_engine import ANSWER, FakeEngine, Script
from tests.inprocess import (
    ENDPOINT,
    ClientApp,
    InProcess,
    Response,
    bearer,
    running,
    sse_data,
    sse_json,
)

CHAT = "/v2/chat/completions"


@pytest.fixture
def app(qf: InProcess) -> ClientApp:
    return qf.new_app()


@pytest.fixture
def key(qf: InProcess, app: ClientApp) -> str:
    return qf.v2_key(app)


def chat(
    qf: InProcess, key: str, headers: Mapping[str, str] | None = None, **fields: Any
) -> Response:
    """A V2 chat call: `fields` over a plain question to the default endpoint."""
    body = {"model": ENDPOINT, "messages": HI, **fields}
    return qf.client.post(CHAT, json=body, headers={**bearer(key), **(headers or {})})


def answered(response: Response) -> str:
    """The text of a plain V2 answer, its shape checked."""
    return V2.reply(response, Ask()).text


def refused(response: Response, code: str, status: int) -> str:
    """The message of a V2 error, its code and status checked."""
    failure = V2.failure(response)
    assert (failure.code, failure.status) == (code, status), failure.message
    return failure.message


# The model list.


def test_models_lists_the_endpoints_the_app_may_use(tmp_path: Path) -> None:
    with running(tmp_path, FakeEngine(), endpoints=(ENDPOINT, "ernie_speed")) as qf:
        app = qf.new_app()
        qf.store.apps.set_access(app.app_id, {}, [ENDPOINT])
        response = qf.client.get("/v2/models", headers=bearer(qf.v2_key(app)))
        assert response.status_code == 200
        listing = response.json()
        assert listing["object"] == "list"
        (model,) = listing["data"]
        assert model["id"] == ENDPOINT and model["object"] == "model"
        assert isinstance(model["created"], int) and model["owned_by"]
        assert model["context_length"] == qf.engine.context_length == 4096
        # An app with no restriction sees every endpoint.
        everything = qf.client.get("/v2/models", headers=bearer(qf.v2_key(qf.new_app())))
        assert [m["id"] for m in everything.json()["data"]] == [ENDPOINT, "ernie_speed"]


def test_models_says_no_context_length_while_the_engine_is_not_ready(
    qf: InProcess, key: str
) -> None:
    qf.engine.available = False
    (model,) = qf.client.get("/v2/models", headers=bearer(key)).json()["data"]
    assert model["id"] == ENDPOINT and "context_length" not in model


def test_models_needs_a_valid_key(qf: InProcess) -> None:
    refused(qf.client.get("/v2/models"), "invalid_iam_token", 401)
    refused(qf.client.get("/v2/models", headers=bearer(V2.forged_key)), "invalid_iam_token", 401)


def test_models_checks_the_appid_header(qf: InProcess, app: ClientApp, key: str) -> None:
    mine = qf.client.get("/v2/models", headers={**bearer(key), "appid": str(app.app_id)})
    assert [m["id"] for m in mine.json()["data"]] == [ENDPOINT]
    other = str(qf.new_app("other").app_id)
    refused(
        qf.client.get("/v2/models", headers={**bearer(key), "appid": other}), "invalid_appid", 401
    )


# The request body.


def test_content_as_an_array_of_text_parts(qf: InProcess, key: str) -> None:
    parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
    response = chat(qf, key, messages=[{"role": "user", "content": parts}])
    assert answered(response) == ANSWER
    assert qf.engine.last.messages == (("user", "Hi there"),)


def test_a_system_message_first_is_the_system_prompt(qf: InProcess, key: str) -> None:
    messages = [{"role": "system", "content": "Be brief"}, *HI]
    assert answered(chat(qf, key, messages=messages)) == ANSWER
    assert qf.engine.last.messages == (("system", "Be brief"), ("user", "Hi there"))


def test_a_system_message_not_first_is_refused(qf: InProcess, key: str) -> None:
    messages = [*HI, {"role": "assistant", "content": "Hello"}]
    messages += [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Go"}]
    message = refused(chat(qf, key, messages=messages), "invalid_messages", 400)
    assert "system" in message
    assert qf.engine.requests == []


@pytest.mark.parametrize(
    "content",
    ["", " \n", None, []],
    ids=["empty", "blank", "null", "no-parts"],
)
def test_a_message_without_content_is_invalid_messages(
    qf: InProcess, key: str, content: object
) -> None:
    """Not `characters_too_long`: nothing is too long."""
    messages = [{"role": "user", "content": content}]
    message = refused(chat(qf, key, messages=messages), "invalid_messages", 400)
    assert "must not be empty" in message


def test_tools_with_tool_choice_none_are_accepted(qf: InProcess, key: str) -> None:
    tools = [{"type": "function", "function": {"name": "weather"}}]
    assert answered(chat(qf, key, tools=tools, tool_choice="none")) == ANSWER


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_plain_text_response_format_is_accepted(qf: InProcess, key: str, stream: bool) -> None:
    ask = Ask(stream=stream, wire={"response_format": {"type": "text"}})
    assert V2.reply(V2.post(qf, key, ask), ask).text == ANSWER


def test_unknown_and_unhonoured_fields_are_accepted_and_ignored(qf: InProcess, key: str) -> None:
    response = chat(
        qf,
        key,
        web_search={"enable": True, "enable_citation": True},
        enable_thinking=True,
        reasoning_effort="high",
        metadata={"team": "search"},
        no_such_field={"any": ["thing"]},
        logprobs=True,
    )
    assert answered(response) == ANSWER
    assert qf.engine.last.messages == (("user", "Hi there"),)


def test_penalty_score_and_max_completion_tokens_reach_the_engine(qf: InProcess, key: str) -> None:
    response = chat(qf, key, penalty_score=1.5, max_completion_tokens=2, seed=7)
    reply = V2.reply(response, Ask())
    assert (reply.text, reply.finish) == ("Hello from", "length")
    sampling = qf.engine.last.sampling
    assert (sampling.repeat_penalty, sampling.max_tokens, sampling.seed) == (1.5, 2, 7)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"temperature": 0}, "temperature"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"penalty_score": 2.5}, "penalty_score"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ["x" * 21]}, "stop"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"max_tokens": 0}, "max"),
    ],
    ids=[
        "temperature-0",
        "temperature-1.5",
        "top_p",
        "penalty_score",
        "five-stops",
        "long-stop",
        "metadata",
        "max_tokens-0",
    ],
)
def test_values_out_of_v2s_ranges_are_refused(
    qf: InProcess, key: str, fields: dict[str, Any], named: str
) -> None:
    message = refused(chat(qf, key, **fields), "invalid_argument", 400)
    assert named in message
    assert qf.engine.requests == []


# Credentials.


def test_appid_naming_the_keys_app_is_accepted(qf: InProcess, app: ClientApp, key: str) -> None:
    assert answered(chat(qf, key, headers={"appid": str(app.app_id)})) == ANSWER


def test_appid_naming_another_app_is_refused(qf: InProcess, key: str) -> None:
    other = qf.new_app("other")
    response = chat(qf, key, headers={"appid": str(other.app_id)})
    refused(response, "invalid_appid", 401)
    assert qf.engine.requests == []


def test_a_revoked_key_is_refused(qf: InProcess, key: str) -> None:
    assert answered(chat(qf, key)) == ANSWER
    assert qf.store.v2_keys.revoke(key) == 1
    give_up = time.monotonic() + 10
    # A server may keep a verified key for a moment; the revocation takes hold within it.
    while (response := chat(qf, key)).status_code == 200:
        assert time.monotonic() < give_up, "the revoked key is still accepted"
        time.sleep(0.05)
    refused(response, "invalid_iam_token", 401)


# Streams and usage.


def test_include_usage_ends_the_stream_with_a_usage_chunk(qf: InProcess, key: str) -> None:
    response = chat(qf, key, stream=True, stream_options={"include_usage": True})
    assert sse_data(response)[-1] == "[DONE]"
    *answer, last = sse_json(response)
    assert last["choices"] == [] and last["object"] == "chat.completion.chunk"
    assert last["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 5,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert all(chunk.get("usage") is None for chunk in answer)
    assert answer[-1]["choices"][0]["finish_reason"] == "stop"


def test_without_include_usage_no_usage_chunk(qf: InProcess, key: str) -> None:
    response = chat(qf, key, stream=True)
    assert sse_data(response)[-1] == "[DONE]"
    chunks = sse_json(response)
    assert all(chunk["choices"] and chunk.get("usage") is None for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_cached_tokens_come_from_the_engine(qf: InProcess, key: str, stream: bool) -> None:
    qf.engine.script = Script(cached_tokens=3)
    ask = Ask(stream=stream, include_usage=True)
    reply = V2.reply(V2.post(qf, key, ask), ask)
    assert reply.cached_tokens == 3 and reply.prompt_tokens == 4


def test_cached_tokens_are_zero_when_the_engine_does_not_say(qf: InProcess, key: str) -> None:
    assert V2.reply(chat(qf, key), Ask()).cached_tokens == 0


# Quotas.


def test_quota_refusal_is_a_429_with_v2s_code(qf: InProcess) -> None:
    first, second = _answered_then_refused(qf, {"rpm": 1})
    assert answered(first) == ANSWER
    body = second.json()
    assert body["error"] == {
        "code": "rpm_rate_limit_exceeded",
        "message": "Rate limit reached for RPM",
        "type": "rate_limit_exceeded",
    }
    assert body["id"].startswith("as-")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_rate_limit_headers_under_v2s_names(qf: InProcess, stream: bool) -> None:
    prompt_and_answer = 4 + 8
    first, second = _answered_then_refused(qf, {"rpm": 1, "tpm": 1000}, stream=stream)
    assert V2.reply(first, Ask(stream=stream)).text == ANSWER
    assert second.status_code == 429
    for response in (first, second):
        assert "X-Ratelimit-Limit-Tokens" not in response.headers
        assert response.headers["X-Ratelimit-Limit-Requests"] == "1"
        assert response.headers["X-Ratelimit-Limit-Input-Tokens"] == "1000"
        assert response.headers["X-Ratelimit-Limit-Output-Tokens"] == "1000"
        assert response.headers["X-Ratelimit-Remaining-Requests"] == "0"
    # The answer's reservation (its prompt and its max_tokens) is off the minute's tokens.
    for name in ("X-Ratelimit-Remaining-Input-Tokens", "X-Ratelimit-Remaining-Output-Tokens"):
        assert int(first.headers[name]) <= 1000 - prompt_and_answer


def test_a_tpm_refusal_is_a_429_with_v2s_tpm_code(qf: InProcess) -> None:
    # The first answer (4 + 5 tokens) leaves no room in the minute for the second's reservation
    # (its prompt, 4, and its max_tokens, 8).
    first, second = _answered_then_refused(qf, {"tpm": 10})
    assert V2.reply(first, Ask()).total_tokens == 9
    refused(second, "tpm_rate_limit_exceeded", 429)
    assert second.json()["error"]["type"] == "rate_limit_exceeded"
    assert second.headers["X-Ratelimit-Limit-Input-Tokens"] == "10"


def _answered_then_refused(
    qf: InProcess, quota: dict[str, int], *, stream: bool = False
) -> tuple[Response, Response]:
    """Two calls within one minute of an app with `quota`, expected to be answered, then
    refused. Quota windows are aligned to the clock, so a pair that straddles a minute is tried
    again."""
    give_up = time.monotonic() + 30
    while True:
        key = qf.v2_key(qf.new_app("limited", **quota))
        before = time.time()
        first = chat(qf, key, max_tokens=8, stream=stream)
        second = chat(qf, key, max_tokens=8, stream=stream)
        if before // 60 == time.time() // 60:
            return first, second
        assert time.monotonic() < give_up, "no two requests fell within one minute"
