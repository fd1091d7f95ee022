"""Tool calls on the real bundled model, through the `openai` SDK on /v1 and /v2: a forced call's
arguments always keep to the tool's schema, and a conversation goes call, result, answer."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.servers import Server, qfserve

pytestmark = [pytest.mark.model, pytest.mark.slow]

MODEL = "llama_2_7b"
WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "days": {"type": "integer"},
        "hourly": {"type": "boolean"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
CLOCK_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 12}},
    "required": ["zone"],
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather forecast for a city",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "clock",
            "description": "The time in a time zone",
            "parameters": CLOCK_PARAMETERS,
        },
    },
]
SCHEMAS = {"weather": WEATHER_PARAMETERS, "clock": CLOCK_PARAMETERS}
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What will the weather be in Paris tomorrow?"}
]


@pytest.fixture(scope="module", params=["v1", "v2"])
def client(request: pytest.FixtureRequest, server: Server) -> openai.OpenAI:
    app_id = str(server.create_app(f"tools-{request.param}")["app_id"])
    if request.param == "v1":
        made = qfserve("app", "key", "create", app_id, "--json", env=server.env).stdout
        key = json.loads(made)["key"]
    else:
        made = qfserve("app", "v2-key", "create", app_id, "--json", env=server.env).stdout
        key = json.loads(made)["api_key"]
    return openai.OpenAI(base_url=f"{server.url}/{request.param}", api_key=key, max_retries=0)


def ask(client: openai.OpenAI, messages: list[ChatCompletionMessageParam], **fields: Any) -> Any:
    fields = {"max_tokens": 96, **fields}
    return client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, **fields)


@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "clock"}}],
    ids=["required", "named"],
)
def test_a_forced_call_keeps_to_the_schema(client: openai.OpenAI, choice: Any) -> None:
    for seed in range(2):
        reply = ask(client, QUESTION, tool_choice=choice, temperature=1.0, seed=seed)
        (answer,) = reply.choices
        assert answer.finish_reason == "tool_calls", answer
        calls = answer.message.tool_calls
        assert calls and answer.message.content is None
        for call in calls:
            assert call.id.startswith("call_") and call.type == "function"
            if isinstance(choice, dict):
                assert call.function.name == "clock"
            arguments = json.loads(call.function.arguments)
            jsonschema.validate(arguments, SCHEMAS[call.function.name])


def test_call_result_answer(client: openai.OpenAI) -> None:
    """The call streamed, its result sent back, and the model's answer to it."""
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "weather"}},
            max_tokens=96,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    (call,) = [call for d in deltas for call in d.tool_calls or ()]
    assert call.index == 0 and call.id and call.function and call.function.name == "weather"
    assert call.function.arguments is not None
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    messages: list[ChatCompletionMessageParam] = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "weather", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny", "high": 21}'},
    ]
    reply = ask(client, messages, tool_choice="none", max_tokens=32, temperature=0.01)
    (answer,) = reply.choices
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.role == "assistant" and answer.message.content
    assert not answer.message.tool_calls
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    # With the tools still on offer the model may answer or call again: either is an answer.
    again = ask(client, messages, max_tokens=48, temperature=0.01)
    (answer,) = again.choices
    assert answer.finish_reason in ("stop", "length", "tool_calls")
    assert answer.message.content or answer.message.tool_calls
