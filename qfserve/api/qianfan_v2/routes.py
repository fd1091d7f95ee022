"""Qianfan V2's routes: `POST /v2/chat/completions` and `GET /v2/models`, over the same pipeline,
apps, quotas, safety and ledger as every dialect. Errors in V2's shape, answered by the app's
handler."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from qfserve.access.gate import AccessGate, Credentials
from qfserve.api.calls import parse_json, read_body, run_chat
from qfserve.api.openai.routes import offered_tools, output_format
from qfserve.api.qianfan_v2.protocol import ChatCompletionRequest, V2Message
from qfserve.api.qianfan_v2.render import QIANFAN_V2
from qfserve.chat.conversation import Message
from qfserve.chat.params import QIANFAN_V2 as V2_RULES
from qfserve.chat.params import RequestedSampling
from qfserve.config import Settings
from qfserve.errors import InvalidArgument, InvalidMessages
from qfserve.serving.chat import ChatServing
from qfserve.serving.pipeline import ChatPipeline
from qfserve.serving.request import ChatRequest


def build_routes(
    settings: Settings, pipeline: ChatPipeline, serving: ChatServing, gate: AccessGate
) -> list[BaseRoute]:
    async def models(request: Request) -> Response:
        app = await gate.verify(credentials(request))
        created = int(time.time())
        data = []
        for endpoint in settings.endpoints:
            if not app.may_use(endpoint.name):
                continue
            model = {
                "id": endpoint.name,
                "object": "model",
                "created": created,
                "owned_by": "qfserve",
            }
            context = serving.context_length(endpoint.name)
            data.append(model if context is None else {**model, "context_length": context})
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(request: Request) -> Response:
        raw = await read_body(request, settings.max_request_bytes)

        def parse() -> ChatRequest:
            body = parse_json(raw, ChatCompletionRequest)
            system, messages = conversation(body.messages)
            return ChatRequest(
                body.model,
                messages,
                system,
                sampling(body),
                V2_RULES,
                stream=body.stream,
                user_id=body.user,
                include_usage=bool(body.stream_options and body.stream_options.include_usage),
                output_format=output_format(body.response_format),
                tools=offered_tools(body.tools, body.tool_choice),
            )

        outcome = await run_chat(request, pipeline, credentials(request), parse)
        return QIANFAN_V2.render(outcome)

    return [
        Route("/v2/chat/completions", chat_completions, methods=["POST"]),
        Route("/v2/models", models, methods=["GET"]),
    ]


def credentials(request: Request) -> Credentials:
    """A V2 API key or bearer token, and the `appid` header naming the app it must belong to."""
    authorization = request.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    bearer = value.strip() if scheme.lower() == "bearer" else None
    return Credentials(
        access_token=None, bearer=bearer or None, app_id_header=request.headers.get("appid")
    )


def conversation(messages: list[V2Message]) -> tuple[str | None, list[Message]]:
    """A system message may only come first; tool calls in the history need tool support."""
    for index, message in enumerate(messages):
        if message.role == "system" and index > 0:
            raise InvalidMessages("a system message must be the first message")
        if message.role == "tool" or message.tool_calls:
            raise InvalidArgument(
                "tool calls in the messages are not supported: this server cannot call tools yet"
            )
    if messages and messages[0].role == "system":
        return messages[0].text() or None, [Message(m.role, m.text()) for m in messages[1:]]
    return None, [Message(m.role, m.text()) for m in messages]


def sampling(body: ChatCompletionRequest) -> RequestedSampling:
    penalty = body.penalty_score if body.penalty_score is not None else body.repetition_penalty
    return RequestedSampling(
        temperature=body.temperature,
        top_p=body.top_p,
        penalty_score=penalty,
        stop=body.stop,
        max_output_tokens=body.max_completion_tokens or body.max_tokens,
        seed=body.seed,
    )
