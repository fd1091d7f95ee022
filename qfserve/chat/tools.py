"""Tool calls: which tools are offered and how, the prompt that offers them to a model whose chat
template cannot, the grammar that forces a call, and reading calls out of the model's answer.

The call format (the fallback prompt asks for it; the grammar enforces it):

    {"name": "<a tool's name>", "arguments": {<the arguments, as the tool's schema says>}}

or, for several calls at once, a JSON array of such objects. Read back from an answer, the
object may also be wrapped in `<tool_call>...</tool_call>` tags (Hermes and Qwen templates), follow
`[TOOL_CALLS]` (Mistral's), or carry its arguments as `parameters` (Llama 3's): the formats the
models whose templates offer tools were trained on.

Pure functions and data: no I/O.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from qfserve.chat.conversation import Message
from qfserve.chat.formats import ToolCall, ToolChoice, ToolSpec
from qfserve.errors import InvalidArgument

# OpenAI's rule for function names.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What a model whose template offers tools may put around its calls.
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_PREFIXES = ("<tool_call>", "[TOOL_CALLS]")
# How the fallback renders a tool's result, as a user message.
RESULT_HEADING = "Result of the tool call {id} ({name}):"


@dataclass(frozen=True, slots=True)
class ToolUse:
    """The tools offered to the model for one answer, and how it must use them: `auto` (answer
    or call), `required` (call one of them) or `function` (call the tool `choice.name`)."""

    tools: tuple[ToolSpec, ...]
    choice: ToolChoice
    parallel: bool = True

    @property
    def forced(self) -> bool:
        return self.choice.mode in ("required", "function")

    @property
    def callable(self) -> tuple[ToolSpec, ...]:
        """The tools the answer may call."""
        if self.choice.mode == "function":
            return tuple(t for t in self.tools if t.name == self.choice.name)
        return self.tools


def tool_use(tools: Sequence[ToolSpec], choice: ToolChoice, parallel: bool) -> ToolUse | None:
    """The tools on offer, checked (invalid_argument with the reason); None when none are: no
    tools, or `tool_choice` none."""
    names = [tool.name for tool in tools]
    for name in names:
        if not _NAME.fullmatch(name):
            raise InvalidArgument(
                f"Invalid Argument: tool name {name[:80]!r} must be 1 to 64 letters, digits, "
                "underscores or dashes"
            )
    if len(set(names)) != len(names):
        raise InvalidArgument("Invalid Argument: the names of tools must differ")
    if choice.mode == "none":
        return None
    if not tools:
        if choice.mode == "auto":
            return None
        raise InvalidArgument(f"Invalid Argument: tool_choice {choice.mode} needs tools")
    if choice.mode == "function" and choice.name not in names:
        raise InvalidArgument(
            f"Invalid Argument: tool_choice names the function {choice.name!r}, which is not "
            "one of the tools"
        )
    use = ToolUse(tuple(tools), choice, parallel)
    if use.forced:
        call_grammar(use)  # a schema the grammar cannot express is the client's error, now
    return use


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


# The prompt, for templates that cannot offer tools themselves.


def tools_prompt(use: ToolUse) -> str:
    """The system instruction offering the tools, and the exact call format."""
    lines = [
        "You can call these tools. Each is described by a JSON object: its name, what it does, "
        "and the JSON Schema of its arguments.",
    ]
    for tool in use.tools:
        spec = {
            "name": tool.name,
            "description": tool.description,
            "parameters": _arguments_schema(tool),
        }
        lines.append(json.dumps(spec, ensure_ascii=False))
    lines.append(
        "To call a tool, answer with a JSON object and nothing else: "
        '{"name": "<the tool\'s name>", "arguments": {<the arguments>}}'
    )
    if use.parallel and use.choice.mode != "function":
        lines.append("To call several tools at once, answer with a JSON array of such objects.")
    if use.choice.mode == "auto":
        lines.append("When no tool is needed, answer in plain text.")
    elif use.choice.mode == "required":
        lines.append("You must call a tool now.")
    else:
        lines.append(f'You must call the tool "{use.choice.name}" now.')
    lines.append(
        "The results of calls come back in a message that begins with "
        + RESULT_HEADING.format(id="<the call's id>", name="<the tool's name>")
    )
    return "\n".join(lines)


def with_tools_prompt(system: str | None, use: ToolUse | None) -> str | None:
    if use is None:
        return system
    offered = tools_prompt(use)
    return f"{system}\n\n{offered}" if system else offered


def as_plain_conversation(messages: Sequence[Message]) -> list[Message]:
    """The conversation for a template that knows no tools: each call as the assistant's text in
    the call format, and the results of a call as one user message, each result under its
    heading. The roles then alternate as in a conversation without tools (a question right
    after results joins them in their user message)."""
    plain: list[Message] = []
    names: dict[str, str] = {}
    results: list[str] = []
    for message in messages:
        if message.role == "tool":
            call_id = message.tool_call_id or ""
            heading = RESULT_HEADING.format(id=call_id, name=names.get(call_id, "unknown"))
            results.append(f"{heading}\n{message.content}")
            continue
        if results:
            if message.role == "user":
                results.append(message.content)
                message = Message("user", "\n\n".join(results))
            else:
                plain.append(Message("user", "\n\n".join(results)))
            results = []
        if message.tool_calls:
            names.update((call.id, call.name) for call in message.tool_calls)
            calls = format_calls(message.tool_calls)
            text = f"{message.content.strip()}\n{calls}" if message.content.strip() else calls
            plain.append(Message("assistant", text))
        else:
            plain.append(Message(message.role, message.content))
    if results:
        plain.append(Message("user", "\n\n".join(results)))
    return plain


def format_calls(calls: Sequence[ToolCall]) -> str:
    """Calls in the call format: one object, or an array of them."""
    objects = [{"name": call.name, "arguments": arguments_value(call.arguments)} for call in calls]
    return json.dumps(objects[0] if len(objects) == 1 else objects, ensure_ascii=False)


def arguments_value(arguments: str) -> Any:
    """A call's arguments as JSON data when they are JSON (they should be), else the text."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


# The grammar.


def call_grammar(use: ToolUse) -> str | None:
    """The GBNF grammar (root `root`) an answer that must call keeps to: the call format, with
    `name` one of the callable tools and `arguments` keeping to that tool's schema; an array of
    calls too when parallel calls are allowed. None when the model may also answer in prose."""
    if not use.forced:
        return None
    calls = [_call_schema(tool) for tool in use.callable]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema = one
    if use.parallel and use.choice.mode == "required":
        schema = {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]}
    return _grammar(json.dumps(schema, sort_keys=True))


def _call_schema(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": _arguments_schema(tool)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _arguments_schema(tool: ToolSpec) -> dict[str, Any]:
    return dict(tool.parameters) if tool.parameters else {"type": "object"}


@functools.lru_cache(maxsize=256)
def _grammar(schema: str) -> str:
    try:
        return str(json_schema_to_gbnf(schema, ["name", "arguments"]))
    except Exception as exc:
        raise InvalidArgument(
            f"Invalid Argument: the parameters of the tools cannot be enforced: {exc}"[:300]
        ) from None


# Reading calls back.


def parse_calls(text: str, use: ToolUse) -> tuple[ToolCall, ...]:
    """The calls the answer makes, each with a new id; () when the answer is not wholly calls
    of callable tools in one of the formats read (see the module's doc)."""
    body = text.strip()
    if body.startswith("[TOOL_CALLS]"):
        body = body.removeprefix("[TOOL_CALLS]").strip()
    tagged = _TAGGED.findall(body)
    try:
        if tagged and not _TAGGED.sub("", body).strip():
            values = [json.loads(part) for part in tagged]
        else:
            values = [json.loads(body)]
    except ValueError:
        return ()
    items: list[Any] = []
    for value in values:
        items.extend(value if isinstance(value, list) else [value])
    names = {tool.name for tool in use.callable}
    calls: list[ToolCall] = []
    for item in items:
        call = _call(item, names)
        if call is None:
            return ()
        calls.append(call)
    return tuple(calls)


def _call(item: Any, names: set[str]) -> ToolCall | None:
    if isinstance(item, dict) and isinstance(item.get("function"), dict):
        item = item["function"]  # OpenAI's own shape
    if not isinstance(item, dict) or item.get("name") not in names:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), item["name"], json.dumps(arguments, ensure_ascii=False))


class CallWatch:
    """Reads an answer as it arrives for calls. An answer that must call is held whole; one that
    may call is held only once it begins like a call (a `{`, a `[` or a call tag, after any
    whitespace), else released as it comes. What was held comes back at the end as calls, or as
    text when it was not calls after all."""

    def __init__(self, use: ToolUse) -> None:
        self._use = use
        self._held = ""
        self._holding = use.forced
        self._deciding = not use.forced

    def feed(self, text: str) -> str:
        """The text that can go to the client now."""
        if not self._holding and not self._deciding:
            return text
        self._held += text
        if self._holding:
            return ""
        start = self._held.lstrip()
        if not start:
            return ""
        if start[0] in "{[" or start.startswith(_PREFIXES):
            self._holding, self._deciding = True, False
            return ""
        if any(prefix.startswith(start) for prefix in _PREFIXES):
            return ""  # maybe a tag: wait for more
        self._deciding = False
        released, self._held = self._held, ""
        return released

    def finish(self) -> tuple[str, tuple[ToolCall, ...]]:
        """At the answer's end: the held text, or the calls it makes."""
        held, self._held = self._held, ""
        calls = parse_calls(held, self._use) if held.strip() else ()
        return ("", calls) if calls else (held, ())
