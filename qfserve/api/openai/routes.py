"""OpenAI-compatible routes: `POST /v1/chat/completions` and `GET /v1/models`, over the same
pipeline, apps, quotas, safety and ledger as every dialect. Errors in OpenAI's shape, real
statuses, answered by the app's handler."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from qfserve.access.gate import AccessGate, Credentials
from qfserve.api.calls import chat_route, parse_json, read_body, run_chat
from qfserve.api.openai.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ResponseFormat,
    Tool,
)
from qfserve.api.openai.render import OPENAI
from qfserve.chat.conversation import Message
from qfserve.chat.formats import AUTO, JsonFormat, ToolCall, ToolChoice, ToolSpec
from qfserve.chat.params import OPENAI as OPENAI_RULES
from qfserve.chat.params import DialectRules, RequestedSampling
from qfserve.config import Settings
from qfserve.errors import InvalidArgument, RuleViolation
from qfserve.serving.pipeline import ChatPipeline
from qfserve.serving.request import ChatRequest


def build_routes(settings: Settings, pipeline: ChatPipeline, gate: AccessGate) -> list[BaseRoute]:
    async def models(request: Request) -> Response:
        app = await gate.verify(bearer_credentials(request))
        created = int(time.time())
        data = [
            {"id": e.name, "object": "model", "created": created, "owned_by": "qfserve"}
            for e in settings.endpoints
            if app.may_use(e.name)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(request: Request) -> Response:
        raw = await read_body(request, settings.max_request_bytes)

        def parse() -> ChatRequest:
            body = parse_json(raw, ChatCompletionRequest)
            system, messages = conversation(body.messages)
            return chat_request(body, system, messages, sampling(body), OPENAI_RULES)

        return OPENAI.render(await run_chat(request, pipeline, bearer_credentials(request), parse))

    return [
        chat_route("/v1/chat/completions", chat_completions),
        Route("/v1/models", models, methods=["GET"]),
    ]


def bearer_credentials(request: Request) -> Credentials:
    return Credentials(access_token=None, bearer=bearer(request))


def bearer(request: Request) -> str | None:
    """The credential of `Authorization: Bearer ...`, if that is what the request carries."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


def chat_request(
    body: ChatCompletionRequest,
    system: str | None,
    messages: list[Message],
    asked: RequestedSampling,
    rules: DialectRules,
) -> ChatRequest:
    """An OpenAI-shaped body (OpenAI's own, or Qianfan V2's) as the pipeline's request."""
    if body.n not in (None, 1):
        raise RuleViolation("only n=1 is supported")
    return ChatRequest(
        body.model,
        messages,
        system,
        asked,
        rules,
        stream=body.stream,
        user_id=body.user,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        json_format=json_format(body.response_format),
        tools=tool_specs(body.tools),
        tool_choice=tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls is not False,
    )


def conversation(messages: list[ChatMessage]) -> tuple[str | None, list[Message]]:
    """System (and developer) messages become the system prompt; the rest the conversation."""
    system = [m.text() for m in messages if m.role in ("system", "developer")]
    turns = [message(m) for m in messages if m.role not in ("system", "developer")]
    return ("\n\n".join(system) or None), turns


def message(wire: ChatMessage) -> Message:
    """One message of the conversation, with its tool calls, or the call it answers."""
    calls = tuple(
        ToolCall(
            part.id,
            part.function.name,
            part.function.arguments
            if isinstance(part.function.arguments, str)
            else json.dumps(part.function.arguments, ensure_ascii=False),
        )
        for part in wire.tool_calls or ()
    )
    return Message(wire.role, wire.text(), calls, wire.tool_call_id)


def sampling(body: ChatCompletionRequest) -> RequestedSampling:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return RequestedSampling(
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        penalty_score=body.repetition_penalty,
        stop=stop,
        max_output_tokens=body.max_completion_tokens or body.max_tokens,
        seed=body.seed,
    )


def json_format(response_format: ResponseFormat | None) -> JsonFormat | None:
    if response_format is None or response_format.type == "text":
        return None
    spec = response_format.json_schema
    if response_format.type == "json_object" or spec is None:
        return JsonFormat()
    return JsonFormat(spec.schema_, spec.name, bool(spec.strict))


def tool_specs(tools: list[Tool] | None) -> tuple[ToolSpec, ...]:
    return tuple(
        ToolSpec(t.function.name, t.function.description or "", t.function.parameters or {})
        for t in tools or ()
    )


def tool_choice(choice: str | dict[str, Any] | None) -> ToolChoice:
    """`"none"`, `"auto"`, `"required"`, or `{"type": "function", "function": {"name": ...}}`."""
    if choice is None or choice == "auto":
        return AUTO
    if choice in ("none", "required"):
        return ToolChoice(choice)  # type: ignore[arg-type]
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidArgument(
            'Invalid Argument: tool_choice must name a function: {"type": '
            '"function", "function": {"name": ...}}'
        )
    return ToolChoice("function", name)
