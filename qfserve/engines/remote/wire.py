"""The OpenAI-compatible wire: request bodies, streamed chunks, and aiohttp's exceptions translated.

Upstreams differ in small ways absorbed here:
- usage: vLLM, SGLang and llama-server end the stream with a chunk carrying `usage` and no
  choices when asked with `stream_options.include_usage`; llama-cpp-python's server ignores the
  option, so the answer's token count stays the engine's estimate.
- the repetition penalty: vLLM and SGLang read `repetition_penalty`, llama.cpp's servers
  `repeat_penalty`; each ignores the other's name, so both are sent.
- errors after the headers: vLLM reports them as a `data: {"error": ...}` event, not a status.
- tool calls: offered as OpenAI's `tools`/`tool_choice`, answered as `delta.tool_calls` fragments
  (the first of a call with its id and name, the arguments in pieces), joined by `index`.
- a JSON Schema: OpenAI's `response_format` `{"type": "json_schema", "json_schema": {"schema":
  ...}}` is read by vLLM, SGLang and llama-server; llama-cpp-python's server refuses that type
  (422) and reads `{"type": "json_object", "schema": ...}` instead, as llama-server also does.
  Which one an endpoint's upstreams get is its `schema_format`.

Everything aiohttp can raise becomes an `AttemptFailed` in `translate`, so the engine decides
between failover and an error for the client from one `Failure` kind, never from aiohttp's types.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from qfserve.chat.formats import ToolCall, ToolChoice
from qfserve.engines.base import FinishReason, GenerationRequest
from qfserve.errors import InternalError

CHAT_PATH: Final = "/v1/chat/completions"
COMPLETIONS_PATH: Final = "/v1/completions"
# How a JSON Schema is sent upstream: OpenAI's shape, or inside json_object (see above).
SchemaFormat = Literal["json_schema", "json_object"]
# What aiohttp raises, all of it: its client errors, and its HTTP parser's for a malformed answer.
CLIENT_ERRORS = (aiohttp.ClientError, HttpProcessingError)


class Failure(enum.Enum):
    """Why one try on one replica failed; the engine's policy keys on this alone."""

    CONNECT = "connect"  # refused, reset, cut: the replica may be gone (it is marked down)
    TIMEOUT = "timeout"  # no first token, or no next chunk, in time
    SERVER = "server"  # 5xx, or an error event in the stream
    BUSY = "busy"  # 429: the replica is alive but full
    REJECTED = "rejected"  # another 4xx: every replica would refuse it, so no failover
    PROTOCOL = "protocol"  # a body that is not the OpenAI streaming format


class AttemptFailed(Exception):
    def __init__(self, kind: Failure, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None = None  # `prompt_tokens_details.cached_tokens`, where sent


@dataclass(frozen=True, slots=True)
class CallPart:
    """A fragment of a streamed tool call: the call at `index`, its id and name (on its first
    fragment) and the next piece of its arguments."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed event's worth of answer: any of the parts may be absent."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    calls: tuple[CallPart, ...] = ()


class CallJoiner:
    """The calls of an answer, from their streamed fragments."""

    def __init__(self) -> None:
        self._parts: dict[int, list[str]] = {}  # index: [id, name, arguments]

    def add(self, parts: tuple[CallPart, ...]) -> None:
        for part in parts:
            joined = self._parts.setdefault(part.index, ["", "", ""])
            joined[0] = joined[0] or part.id
            joined[1] = joined[1] or part.name
            joined[2] += part.arguments

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(call_id or f"call_{index}", name, arguments or "{}")
            for index, (call_id, name, arguments) in sorted(self._parts.items())
            if name
        )


# What `json.loads` does, in one call rather than three: the payload is stripped already.
_JSON: Final = json.JSONDecoder()


class _Done:
    """The `data: [DONE]` line: the upstream finished the stream on purpose."""


DONE: Final = _Done()


def request_body(
    model: str, request: GenerationRequest, schema_format: SchemaFormat = "json_schema"
) -> tuple[str, dict[str, Any]]:
    """The path and JSON body for one generation: chat messages when the request has them, else
    the already rendered prompt text on the completions route."""
    sampling = request.sampling
    body: dict[str, Any] = {
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if model:
        body["model"] = model
    if sampling.top_k > 0:
        body["top_k"] = sampling.top_k
    # Always explicit, 1.0 included, and min_p off as our own sampler has it: an upstream fills
    # what is left out with its own defaults (llama-cpp-python's server: repeat_penalty 1.1,
    # min_p 0.05), which changes the answers and, measured there, costs ~14 ms per first token.
    body["repeat_penalty"] = body["repetition_penalty"] = sampling.repeat_penalty
    body["min_p"] = 0.0
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if request.response_format is not None:
        body["response_format"] = response_format(request.response_format, schema_format)
    if request.messages:
        body["messages"] = [{"role": role, "content": text} for role, text in request.messages]
        for message, (calls, answers) in zip(body["messages"], request.message_calls, strict=False):
            if calls:
                message["tool_calls"] = [_wire_call(call) for call in calls]
                message["content"] = message["content"] or None
            if answers is not None:
                message["tool_call_id"] = answers
        if request.tools and request.tool_choice is not None:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": dict(tool.parameters) or {"type": "object"},
                    },
                }
                for tool in request.tools
            ]
            body["tool_choice"] = _wire_choice(request.tool_choice)
            body["parallel_tool_calls"] = request.parallel_tool_calls
        return CHAT_PATH, body
    if request.prompt_text:
        body["prompt"] = request.prompt_text
        return COMPLETIONS_PATH, body
    # Token ids alone cannot be sent: they are our tokenizer's, and may be estimates.
    raise InternalError("a remote engine needs the request's messages or prompt text")


def _wire_call(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _wire_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def response_format(asked: Mapping[str, Any], schema_format: SchemaFormat) -> dict[str, Any]:
    """OpenAI's `response_format` as the upstream reads it."""
    spec = asked.get("json_schema")
    if schema_format == "json_object" and asked.get("type") == "json_schema":
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return {"type": "json_object", "schema": schema or {"type": "object"}}
    return dict(asked)


def finish_reason(upstream: str) -> FinishReason:
    # "length" is the only reason the chat layer treats differently; "eos", "stop_sequence",
    # "tool_calls" and the like all mean the model stopped on its own.
    return "length" if upstream == "length" else "stop"


def parse_line(line: str, *, chat: bool) -> Chunk | _Done | None:
    """One line of the event stream: a chunk, DONE, or None for lines that carry nothing
    (blank separators, `: ping` comments, `event:` and `id:` fields)."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return DONE
    try:
        event, end = _JSON.raw_decode(payload)
        if end != len(payload):
            raise ValueError("more after the JSON value")
    except ValueError as exc:
        raise AttemptFailed(Failure.PROTOCOL, f"not JSON: {payload[:200]!r}") from exc
    if not isinstance(event, dict):
        raise AttemptFailed(Failure.PROTOCOL, f"not an object: {payload[:200]!r}")
    if "error" in event or event.get("object") == "error":
        raise AttemptFailed(Failure.SERVER, f"error event: {payload[:500]}")
    text, reason = "", None
    calls: tuple[CallPart, ...] = ()
    choices = event.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        part = choice.get("delta") if chat else choice
        content = part.get("content" if chat else "text") if isinstance(part, dict) else None
        text = content if isinstance(content, str) else ""
        reason = choice.get("finish_reason")
        reason = reason if isinstance(reason, str) else None
        if chat and isinstance(part, dict) and isinstance(part.get("tool_calls"), list):
            calls = _call_parts(part["tool_calls"])
    usage = event.get("usage")
    return Chunk(text, reason, _usage(usage) if isinstance(usage, dict) else None, calls)


def _call_parts(wire: list[Any]) -> tuple[CallPart, ...]:
    parts: list[CallPart] = []
    for position, item in enumerate(wire):
        if not isinstance(item, dict):
            continue
        function = item.get("function")
        function = function if isinstance(function, dict) else {}
        index = item.get("index")
        parts.append(
            CallPart(
                index if isinstance(index, int) else position,
                _text(item.get("id")),
                _text(function.get("name")),
                _text(function.get("arguments")),
            )
        )
    return tuple(parts)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _usage(usage: dict[str, Any]) -> Usage:
    def count(key: str) -> int | None:
        value = usage.get(key)
        return value if isinstance(value, int) and value >= 0 else None

    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        count("prompt_tokens"),
        count("completion_tokens"),
        cached if isinstance(cached, int) and cached >= 0 else None,
    )


def status_failure(status: int, body: str) -> AttemptFailed:
    """The failure a non-2xx answer to the generation request stands for."""
    detail = f"HTTP {status}: {body[:500]}"
    if status == 429:
        return AttemptFailed(Failure.BUSY, detail)
    if status >= 500:
        return AttemptFailed(Failure.SERVER, detail)
    return AttemptFailed(Failure.REJECTED, detail)


def translate(exc: aiohttp.ClientError | HttpProcessingError) -> AttemptFailed:
    """aiohttp's exceptions, most specific first (its tree: `aiohttp/client_exceptions.py`)."""
    detail = f"{type(exc).__name__}: {exc}"
    # Refused, unresolvable, no connection in time, or a URL no connection can be made to.
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return AttemptFailed(Failure.CONNECT, detail)
    if isinstance(exc, aiohttp.InvalidURL):
        return AttemptFailed(Failure.CONNECT, detail)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return AttemptFailed(Failure.TIMEOUT, detail)
    # A connection that broke after it was made (reset, closed before the answer, a body cut
    # short): most often the replica's process died.
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return AttemptFailed(Failure.CONNECT, detail)
    # An answer that is not HTTP, a line past the reader's limit, a redirect loop: not the
    # OpenAI streaming format we asked for.
    return AttemptFailed(Failure.PROTOCOL, detail)


def is_stale_connection(failure: AttemptFailed) -> bool:
    """Whether a failure before any answer is how a pooled keep-alive connection that the
    upstream closed just as we reused it fails: nothing reached the replica, and the connection is
    dropped, so the same request may go out once more on a new one. A refused connection is not
    one: it was new."""
    cause = failure.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError):
        return False
    stale = aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError
    return isinstance(cause, stale | aiohttp.ClientOSError)
