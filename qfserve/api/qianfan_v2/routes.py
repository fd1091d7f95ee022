"""Qianfan V2's routes: `POST /v2/chat/completions` and `GET /v2/models`, over the same pipeline,
apps, quotas, safety and ledger as every dialect. Errors in V2's shape, answered by the app's
handler."""

from __future__ import annotations

import time
from dataclasses import replace

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from qfserve.access.gate import AccessGate, Credentials
from qfserve.api.calls import chat_route, parse_json, read_body, run_chat
from qfserve.api.openai.routes import bearer, chat_request, message
from qfserve.api.openai.routes import sampling as openai_sampling
from qfserve.api.qianfan_v2.protocol import ChatCompletionRequest, V2Message
from qfserve.api.qianfan_v2.render import QIANFAN_V2
from qfserve.chat.conversation import Message
from qfserve.chat.params import QIANFAN_V2 as V2_RULES
from qfserve.chat.params import RequestedSampling
from qfserve.config import Settings
from qfserve.errors import InvalidMessages
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
            return chat_request(body, system, messages, sampling(body), V2_RULES)

        outcome = await run_chat(request, pipeline, credentials(request), parse)
        return QIANFAN_V2.render(outcome)

    return [
        chat_route("/v2/chat/completions", chat_completions),
        Route("/v2/models", models, methods=["GET"]),
    ]


def credentials(request: Request) -> Credentials:
    """A V2 API key or bearer token, and the `appid` header naming the app it must belong to."""
    return Credentials(
        access_token=None, bearer=bearer(request), app_id_header=request.headers.get("appid")
    )


def conversation(messages: list[V2Message]) -> tuple[str | None, list[Message]]:
    """A system message may only come first."""
    if any(wire.role == "system" for wire in messages[1:]):
        raise InvalidMessages("a system message must be the first message")
    if messages and messages[0].role == "system":
        return messages[0].text() or None, [message(m) for m in messages[1:]]
    return None, [message(m) for m in messages]


def sampling(body: ChatCompletionRequest) -> RequestedSampling:
    """OpenAI's fields, and Qianfan's `penalty_score` before the `repetition_penalty` extension."""
    asked = openai_sampling(body)
    if body.penalty_score is None:
        return asked
    return replace(asked, penalty_score=body.penalty_score)
