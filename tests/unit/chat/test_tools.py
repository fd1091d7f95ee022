from __future__ import annotations

import json

import pytest

from qfserve.chat.conversation import Message, check_messages, fit_conversation
from qfserve.chat.formats import ToolCall, ToolChoice, ToolSpec
from qfserve.chat.template import ChatTemplate
from qfserve.chat.tools import (
    CallWatch,
    ToolUse,
    as_plain_conversation,
    call_grammar,
    parse_calls,
    tool_use,
    tools_prompt,
)
from qfserve.engines.base import EngineInfo
from qfserve.errors import InvalidArgument, InvalidMessages, TooManyCharacters

WEATHER = ToolSpec(
    "weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec("clock", "The time")
AUTO = ToolUse((WEATHER, CLOCK), ToolChoice("auto"))
REQUIRED = ToolUse((WEATHER, CLOCK), ToolChoice("required"))
NAMED = ToolUse((WEATHER, CLOCK), ToolChoice("function", "clock"))
CALL = ToolCall("call_1", "weather", '{"city": "Paris"}')


def names(calls: tuple[ToolCall, ...]) -> list[str]:
    return [call.name for call in calls]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "weather", "arguments": {"city": "Paris"}}',
        '  {"name":"weather","arguments":"{\\"city\\": \\"Paris\\"}"}\n',
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        '[TOOL_CALLS] [{"name": "weather", "arguments": {"city": "Paris"}}]',
        '{"name": "weather", "parameters": {"city": "Paris"}}',
        '{"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}',
    ],
    ids=["plain", "string-arguments", "hermes", "mistral", "llama3", "openai"],
)
def test_calls_are_read_in_every_format(text: str) -> None:
    (call,) = parse_calls(text, AUTO)
    assert call.name == "weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_") and len(call.id) > 10


@pytest.mark.parametrize(
    "text",
    [
        "Hello",
        '{"name": "nope", "arguments": {}}',
        '{"name": "weather", "arguments": [1]}',
        '{"name": "weather"} and more',
        "[]",
        "{",
    ],
)
def test_what_is_not_wholly_calls_is_no_call(text: str) -> None:
    assert parse_calls(text, AUTO) == ()


def test_a_named_choice_reads_only_that_tool() -> None:
    assert parse_calls('{"name": "weather", "arguments": {}}', NAMED) == ()
    assert names(parse_calls('{"name": "clock", "arguments": {}}', NAMED)) == ["clock"]


def test_several_calls_and_their_ids() -> None:
    calls = parse_calls('[{"name": "clock", "arguments": {}}, {"name": "clock"}]', AUTO)
    assert names(calls) == ["clock", "clock"] and calls[0].id != calls[1].id
    assert calls[1].arguments == "{}"


def test_watch_releases_prose_at_once_and_holds_what_may_be_a_call() -> None:
    prose = CallWatch(AUTO)
    assert prose.feed("  ") == "" and prose.feed("Hi") == "  Hi" and prose.feed(" you") == " you"
    assert prose.finish() == ("", ())
    tagged = CallWatch(AUTO)
    assert tagged.feed("<tool") == "" and tagged.feed("_call>") == ""
    tagged.feed('{"name": "clock", "arguments": {}}</tool_call>')
    assert names(tagged.finish()[1]) == ["clock"]
    html = CallWatch(AUTO)
    assert html.feed("<t") == "" and html.feed("d>") == "<td>"
    json_prose = CallWatch(AUTO)
    assert json_prose.feed('{"a": 1}') == ""
    assert json_prose.finish() == ('{"a": 1}', ())


def test_a_forced_answer_is_held_whole() -> None:
    watch = CallWatch(REQUIRED)
    assert watch.feed("Hello") == "" and watch.finish() == ("Hello", ())


def test_grammars_name_only_the_callable_tools_and_keep_their_schemas() -> None:
    assert call_grammar(AUTO) is None
    required = call_grammar(REQUIRED)
    assert required is not None and '\\"weather\\"' in required and '\\"clock\\"' in required
    named = call_grammar(NAMED)
    assert named is not None and '\\"clock\\"' in named and "weather" not in named
    # Parallel calls: an array of calls too (the weather's schema has no array of its own).
    single = call_grammar(ToolUse((WEATHER,), ToolChoice("required"), parallel=False))
    assert single is not None and '\\"city\\"' in single and '"["' not in single
    several = call_grammar(ToolUse((WEATHER,), ToolChoice("required"), parallel=True))
    assert several is not None and '"["' in several


def test_the_question_limit_is_the_users_not_a_tool_results() -> None:
    long_result = Message("tool", "x" * 500, tool_call_id="call_1")
    check([*TOOL_ROUND[:2], long_result, TOOL_ROUND[3]])
    with pytest.raises(TooManyCharacters, match="current question"):
        check([*TOOL_ROUND, Message("user", "y" * 101)])


def test_tool_use_checks_the_request() -> None:
    assert tool_use((WEATHER,), ToolChoice("none"), True) is None
    assert tool_use((), ToolChoice("auto"), True) is None
    assert tool_use((WEATHER,), ToolChoice("auto"), False) == ToolUse(
        (WEATHER,), ToolChoice("auto"), False
    )
    for tools, choice in [
        ((), ToolChoice("required")),
        ((WEATHER,), ToolChoice("function", "clock")),
        ((WEATHER, WEATHER), ToolChoice("auto")),
        ((ToolSpec("a.b"),), ToolChoice("auto")),
        ((ToolSpec("x", parameters={"$ref": "https://example.com/s.json"}),), REQUIRED.choice),
    ]:
        with pytest.raises(InvalidArgument):
            tool_use(tools, choice, True)


def test_the_fallback_prompt_lists_the_tools_and_the_format() -> None:
    prompt = tools_prompt(REQUIRED)
    assert json.dumps(WEATHER.parameters) in prompt and '"name": "clock"' in prompt
    assert '{"name": "<the tool\'s name>", "arguments": {<the arguments>}}' in prompt
    assert "JSON array" in prompt and "You must call a tool" in prompt
    assert 'You must call the tool "clock"' in tools_prompt(NAMED)
    assert "plain text" in tools_prompt(AUTO)


TOOL_ROUND = [
    Message("user", "Weather?"),
    Message("assistant", "", (CALL, ToolCall("call_2", "clock", "{}"))),
    Message("tool", "Sunny", tool_call_id="call_1"),
    Message("tool", "Noon", tool_call_id="call_2"),
    Message("assistant", "Sunny at noon."),
]


def test_the_fallback_conversation_alternates() -> None:
    plain = as_plain_conversation([*TOOL_ROUND, Message("user", "Thanks")])
    assert [m.role for m in plain] == ["user", "assistant", "user", "assistant", "user"]
    assert json.loads(plain[1].content) == [
        {"name": "weather", "arguments": {"city": "Paris"}},
        {"name": "clock", "arguments": {}},
    ]
    assert plain[2].content == (
        "Result of the tool call call_1 (weather):\nSunny\n\n"
        "Result of the tool call call_2 (clock):\nNoon"
    )


def check(messages: list[Message]) -> None:
    check_messages(messages, max_question_chars=100, max_messages=20)


def test_tool_rounds_are_valid_conversations() -> None:
    check([*TOOL_ROUND, Message("user", "Thanks")])
    check(TOOL_ROUND[:4])  # ends with the results: the model answers them
    check([*TOOL_ROUND[:4], Message("user", "And tomorrow?")])  # as OpenAI allows


def test_a_question_right_after_results_joins_them() -> None:
    single = [TOOL_ROUND[0], Message("assistant", "", (CALL,)), TOOL_ROUND[2]]
    plain = as_plain_conversation([*single, Message("user", "And tomorrow?")])
    assert [m.role for m in plain] == ["user", "assistant", "user"]
    assert plain[2].content.endswith("Sunny\n\nAnd tomorrow?")


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (TOOL_ROUND[:3], "must each be answered"),
        (TOOL_ROUND, "the last message"),
        ([TOOL_ROUND[0], TOOL_ROUND[2]], "must answer a call"),
        ([*TOOL_ROUND[:2], Message("tool", "x", tool_call_id="call_9")], "tool_call_id"),
        ([*TOOL_ROUND[:2], TOOL_ROUND[2], TOOL_ROUND[2]], "tool_call_id"),
        ([*TOOL_ROUND[:4], Message("assistant", "x"), Message("tool", "y")], "answer a call"),
        ([Message("assistant", "", (CALL,)), TOOL_ROUND[2]], "must be user"),
    ],
)
def test_broken_tool_rounds(messages: list[Message], reason: str) -> None:
    with pytest.raises(InvalidMessages, match=reason):
        check(messages)


def test_forgetting_drops_a_call_with_its_results() -> None:
    messages = [*TOOL_ROUND, Message("user", "Thanks " * 5)]
    template = ChatTemplate(EngineInfo("t", "", 4096, "{% for m in messages %}{% endfor %}"))

    def render(kept: object, system: str | None) -> str:
        assert isinstance(kept, list)
        return " ".join(m.content + "".join(c.arguments for c in m.tool_calls) for m in kept)

    def tokenize(text: str) -> list[int]:
        return [0] * len(text.split())

    assert template.renders_tools is False
    fitted = fit_conversation(
        messages,
        None,
        render=render,
        tokenize=tokenize,
        max_total_chars=1000,
        context_length=10,
        max_tokens=4,
    )
    assert fitted.kept_messages == messages[-1:]
    kept_all = fit_conversation(
        messages,
        None,
        render=render,
        tokenize=tokenize,
        max_total_chars=1000,
        context_length=100,
        max_tokens=4,
    )
    assert kept_all.kept_messages == messages
    by_chars = fit_conversation(
        messages,
        None,
        render=render,
        tokenize=tokenize,
        max_total_chars=40,
        context_length=100,
        max_tokens=4,
    )
    assert by_chars.kept_messages == messages[-1:]


# A template in the manner of Hermes and Qwen: tools in the system turn, calls in tags.
HERMES = (
    "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t.function | tojson }}\n"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_renders_tools_gets_them() -> None:
    template = ChatTemplate(EngineInfo("t", "", 4096, HERMES))
    assert template.renders_tools
    prompt = template.render(TOOL_ROUND[:4], None, REQUIRED)
    assert '"name": "weather"' in prompt and "<tool_call>" in prompt
    assert '"arguments": {"city": "Paris"}' in prompt  # as data, not a string in a string
    assert "<|im_start|>tool\nSunny<|im_end|>" in prompt
    assert "You can call these tools" not in prompt


def test_a_template_that_does_not_gets_the_fallback() -> None:
    template = ChatTemplate(EngineInfo("t", "", 4096, "", model_name="llama-2-7b-chat"))
    assert not template.renders_tools
    prompt = template.render(TOOL_ROUND[:4], "Be brief", AUTO)
    assert "[INST] <<SYS>>\nBe brief\n\nYou can call these tools" in prompt
    assert "Result of the tool call call_1 (weather):\nSunny" in prompt
