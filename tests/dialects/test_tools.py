"""Tool calls in the OpenAI-shaped dialects, in-process on the scripted engine: tool messages in
the history, the fallback prompt, calls read from the answer (plain and streamed), and the
grammar of a forced call reaching the engine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qfserve.chat.formats import ToolCall
from qfserve.chat.tools import RESULT_HEADING
from tests.dialects.dialects import OPENAI, V2, Ask, OpenAI
from tests.fake_engine import ANSWER, Script
from tests.inprocess import InProcess, Response, sse_json

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "clock", "description": "The time"}}
CALL = '{"name": "weather", "arguments": {"city": "Paris"}}'
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
]

pytestmark = pytest.mark.parametrize("dialect", [OPENAI, V2], ids=["openai", "v2"])


def post(qf: InProcess, dialect: OpenAI, stream: bool = False, **wire: Any) -> Response:
    secret = dialect.secret(qf, qf.new_app())
    return dialect.post(qf, secret, Ask(stream=stream, wire=wire))


def choice_of(response: Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    return dict(choice)


def streamed(response: Response) -> tuple[str, list[dict[str, Any]], str]:
    """The text, the tool-call deltas and the finish reason of a stream."""
    assert response.status_code == 200, response.text
    choices = [c["choices"][0] for c in sse_json(response) if c["choices"]]
    text = "".join(c["delta"].get("content") or "" for c in choices)
    calls = [call for c in choices for call in c["delta"].get("tool_calls", [])]
    assert choices[-1]["delta"] == {}
    return text, calls, choices[-1]["finish_reason"]


def test_history_with_calls_and_results_is_accepted_and_rendered(
    qf: InProcess, dialect: OpenAI
) -> None:
    choice = choice_of(post(qf, dialect, messages=HISTORY, tools=[WEATHER]))
    assert choice["message"]["content"] == ANSWER and choice["finish_reason"] == "stop"
    prompt = qf.engine.last.prompt_text
    # The fake template knows no tools: the fallback offers them in the system prompt, writes
    # the call in the call format and the result as the user's text.
    assert '"name": "weather"' in prompt and "answer with a JSON object" in prompt
    assert '<|assistant|> {"name": "weather", "arguments": {"city": "Paris"}}' in prompt
    heading = RESULT_HEADING.format(id="call_1", name="weather")
    assert f"<|user|> {heading}\nSunny, 21 C" in prompt
    # A remote upstream gets the calls and results as they came.
    sent = qf.engine.last
    assert [role for role, _ in sent.messages] == ["user", "assistant", "tool"]
    assert sent.message_calls[1][0][0].name == "weather"
    assert sent.message_calls[2][1] == "call_1"
    assert sent.grammar is None and sent.tool_choice is not None
    assert sent.tool_choice.mode == "auto"


@pytest.mark.parametrize(
    ("history", "reason"),
    [
        (HISTORY[:2], "must each be answered"),
        ([HISTORY[0], {"role": "tool", "tool_call_id": "call_1", "content": "x"}], "answer"),
        ([*HISTORY[:2], {**HISTORY[2], "tool_call_id": "call_9"}], "tool_call_id"),
    ],
    ids=["unanswered", "no-call", "wrong-id"],
)
def test_broken_tool_histories_are_invalid_messages(
    qf: InProcess, dialect: OpenAI, history: list[dict[str, Any]], reason: str
) -> None:
    failure = dialect.failure(post(qf, dialect, messages=history, tools=[WEATHER]))
    assert failure.status == 400 and reason in failure.message
    assert failure.code == dialect.code(336003, "invalid_messages")
    assert qf.engine.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_answer_in_the_call_format_comes_back_as_a_call(
    qf: InProcess, dialect: OpenAI, stream: bool
) -> None:
    qf.engine.script = Script(answer=CALL)
    response = post(qf, dialect, stream, tools=[WEATHER, CLOCK])
    if stream:
        text, calls, finish = streamed(response)
        assert text == "" and finish == "tool_calls"
        (call,) = calls
        assert call["index"] == 0
    else:
        choice = choice_of(response)
        assert choice["finish_reason"] == "tool_calls"
        message = choice["message"]
        assert message["content"] is None
        (call,) = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_parallel_calls_come_back_in_order(qf: InProcess, dialect: OpenAI, stream: bool) -> None:
    qf.engine.script = Script(answer=f'[{CALL}, {{"name": "clock", "arguments": {{}}}}]')
    response = post(qf, dialect, stream, tools=[WEATHER, CLOCK], tool_choice="required")
    if stream:
        _, calls, finish = streamed(response)
        assert [c["index"] for c in calls] == [0, 1]
    else:
        choice = choice_of(response)
        calls, finish = choice["message"]["tool_calls"], choice["finish_reason"]
    assert finish == "tool_calls"
    assert [c["function"]["name"] for c in calls] == ["weather", "clock"]
    assert len({c["id"] for c in calls}) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    "answer",
    [ANSWER, '{"note": "not a call"}', '{"name": "unknown", "arguments": {}}', "{ cut"],
    ids=["prose", "other-json", "unknown-tool", "broken-json"],
)
def test_an_answer_that_is_not_a_call_comes_back_as_text(
    qf: InProcess, dialect: OpenAI, stream: bool, answer: str
) -> None:
    qf.engine.script = Script(answer=answer)
    response = post(qf, dialect, stream, tools=[WEATHER])
    if stream:
        text, calls, finish = streamed(response)
    else:
        choice = choice_of(response)
        text, finish = choice["message"]["content"], choice["finish_reason"]
        calls = choice["message"].get("tool_calls", [])
    assert (text, calls, finish) == (answer, [], "stop")


@pytest.mark.parametrize(
    ("choice", "names"),
    [
        ("required", ["weather", "clock"]),
        ({"type": "function", "function": {"name": "clock"}}, ["clock"]),
    ],
    ids=["required", "named"],
)
def test_a_forced_call_has_its_grammar(
    qf: InProcess, dialect: OpenAI, choice: Any, names: list[str]
) -> None:
    qf.engine.script = Script(answer='{"name": "clock", "arguments": {}}')
    reply = choice_of(post(qf, dialect, tools=[WEATHER, CLOCK], tool_choice=choice))
    assert reply["finish_reason"] == "tool_calls"
    grammar = qf.engine.last.grammar
    assert grammar is not None and "root ::=" in grammar
    for name in ("weather", "clock"):
        assert (f'\\"{name}\\"' in grammar) == (name in names), grammar


def test_auto_and_none_have_no_grammar(qf: InProcess, dialect: OpenAI) -> None:
    post(qf, dialect, tools=[WEATHER], tool_choice="auto")
    assert qf.engine.last.grammar is None and qf.engine.last.tools
    choice = choice_of(post(qf, dialect, tools=[WEATHER], tool_choice="none"))
    assert choice["message"]["content"] == ANSWER
    sent = qf.engine.last
    assert sent.grammar is None and not sent.tools and "weather" not in sent.prompt_text


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"tool_choice": "required"}, "needs tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "not one of the tools",
        ),
        ({"tools": [WEATHER, WEATHER]}, "must differ"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "letters"),
    ],
    ids=["required-without-tools", "unknown-function", "duplicate", "bad-name"],
)
def test_bad_tool_requests_are_invalid_arguments(
    qf: InProcess, dialect: OpenAI, fields: dict[str, Any], reason: str
) -> None:
    failure = dialect.failure(post(qf, dialect, **fields))
    assert failure.status == 400 and reason in failure.message
    assert failure.code == dialect.code(336001, "invalid_argument")
    assert qf.engine.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_calls_an_engine_reads_itself_come_back_as_they_are(
    qf: InProcess, dialect: OpenAI, stream: bool
) -> None:
    # A remote engine gives its upstream's calls on the last delta, with the upstream's ids.
    made = ToolCall("call_upstream", "weather", '{"city": "Oslo"}')
    qf.engine.script = Script(answer="", tool_calls=(made,))
    response = post(qf, dialect, stream, tools=[WEATHER])
    if stream:
        _, (call,), finish = streamed(response)
    else:
        choice = choice_of(response)
        (call,), finish = choice["message"]["tool_calls"], choice["finish_reason"]
    assert finish == "tool_calls" and call["id"] == "call_upstream"
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
