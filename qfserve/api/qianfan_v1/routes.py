"""Qianfan V1's routes: parse the body into a chat request, run the pipeline, render the outcome.

Errors are raised, and answered in V1's shape (HTTP 200, `error_code`) by the app's handler.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from qfserve.access import signature
from qfserve.access.gate import AccessGate, Credentials
from qfserve.api.calls import chat_route, parse_json, read_body, run_chat
from qfserve.api.qianfan_v1 import render
from qfserve.api.qianfan_v1.protocol import ChatBody, CompletionBody, SamplingFields, TokenizerBody
from qfserve.api.responses import INT, TEXT, EventStreamResponse, event_format, json_text
from qfserve.chat.conversation import Message
from qfserve.chat.params import QIANFAN, RequestedSampling
from qfserve.config import Settings
from qfserve.serving.chat import ChatServing
from qfserve.serving.pipeline import ChatPipeline
from qfserve.serving.request import ChatRequest, Completed, Outcome, Piece, Refused, Streaming

PREFIX = "/rpc/2.0/ai_custom/v1/wenxinworkshop"


def build_routes(
    settings: Settings, pipeline: ChatPipeline, serving: ChatServing, gate: AccessGate
) -> list[BaseRoute]:
    limit = settings.max_request_bytes

    async def chat(request: Request) -> Response:
        endpoint: str = request.path_params["endpoint"]
        raw = await read_body(request, limit)

        def parse() -> ChatRequest:
            body = parse_json(raw, ChatBody)
            messages = [Message(m.role, m.content) for m in body.messages]
            return _request(endpoint, body, messages, body.system)

        return render_outcome(await run_chat(request, pipeline, credentials(request), parse))

    async def completions(request: Request) -> Response:
        endpoint: str = request.path_params["endpoint"]
        raw = await read_body(request, limit)

        def parse() -> ChatRequest:
            body = parse_json(raw, CompletionBody)
            return _request(endpoint, body, [Message("user", body.prompt)], None)

        outcome = await run_chat(request, pipeline, credentials(request), parse)
        return render_outcome(outcome, "completion")

    async def tokenizer(request: Request) -> Response:
        raw = await read_body(request, limit)
        await gate.verify(credentials(request))
        body = parse_json(raw, TokenizerBody)
        count = serving.tokenize(body.model or serving.default_endpoint, body.prompt)
        return render.json_response(
            {
                "id": render.new_request_id(),
                "object": "tokenizer.erniebot",
                "created": int(time.time()),
                "usage": render.usage(count, 0, count),
            }
        )

    # The chat route first: routes are matched in order.
    return [
        chat_route(PREFIX + "/chat/{endpoint}", chat),
        chat_route(PREFIX + "/completions/{endpoint}", completions),
        Route(PREFIX + "/tokenizer/erniebot", tokenizer, methods=["POST"]),
    ]


def credentials(request: Request) -> Credentials:
    """An access token, or a signed request: what the signature covers (method, path, query,
    headers) is gathered only for a signed request, the one kind that needs it."""
    access_token = request.query_params.get("access_token")
    authorization = request.headers.get("authorization")
    if access_token or not (authorization or "").startswith(signature.PREFIX):
        return Credentials(access_token=access_token, authorization=authorization)
    return Credentials(
        access_token=access_token,
        authorization=authorization,
        method=request.method,
        path=request.url.path,
        query=tuple(request.query_params.multi_items()),
        headers=tuple(request.headers.items()),
    )


def _request(
    endpoint: str, body: SamplingFields, messages: list[Message], system: str | None
) -> ChatRequest:
    sampling = RequestedSampling(
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        penalty_score=body.penalty_score,
        stop=body.stop,
        max_output_tokens=body.max_output_tokens,
        seed=body.seed,
    )
    return ChatRequest(
        endpoint,
        messages,
        system,
        sampling,
        QIANFAN,
        stream=bool(body.stream),
        segmented=True,
        user_id=body.user_id,
    )


def render_outcome(outcome: Outcome, kind: str = "chat.completion") -> Response:
    if isinstance(outcome, Streaming):
        return EventStreamResponse(
            _events(outcome, kind), headers={**render.STREAM_HEADERS, **outcome.headers}
        )
    body = _refusal(outcome, kind) if isinstance(outcome, Refused) else _answer(outcome, kind)
    if outcome.request.stream:  # a refused stream: one event, the last
        return EventStreamResponse(
            _single(render.sse(body)), headers={**render.STREAM_HEADERS, **outcome.headers}
        )
    return render.json_response(body, headers={**render.STATEMENT, **outcome.headers})


def _answer(outcome: Completed, kind: str) -> dict[str, Any]:
    usage = outcome.usage
    return {
        "id": outcome.request_id,
        "object": kind,
        "created": int(time.time()),
        "result": outcome.text,
        "is_truncated": outcome.ending == "length",
        **render.safety_flags(outcome.ending == "content_filter"),
        "usage": render.usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
    }


def _refusal(outcome: Refused, kind: str) -> dict[str, Any]:
    body: dict[str, Any] = {"id": outcome.request_id, "object": kind, "created": int(time.time())}
    if outcome.request.stream:
        body.update(sentence_id=0, is_end=True)
    prompt = outcome.usage.prompt_tokens
    return {
        **body,
        "result": outcome.text,
        "is_truncated": False,
        **render.safety_flags(True, outcome.verdict.ban_round),
        "usage": render.usage(prompt, 0, prompt),
    }


async def _events(outcome: Streaming, kind: str) -> AsyncIterator[bytes]:
    # The events before the last, most of the stream, from a format: only their values rendered.
    middle, quoted_id = _middle_format(kind), json_text(outcome.request_id)
    try:
        sentence_id = 0
        async for piece in outcome.pieces:
            if piece.is_last:
                yield render.sse(_event(outcome.request_id, kind, sentence_id, piece))
            elif piece.text or piece.completion_tokens:
                usage = piece.usage
                yield middle % (
                    quoted_id,
                    int(time.time()),
                    sentence_id,
                    json_text(piece.text),
                    usage.prompt_tokens,
                    piece.completion_tokens,
                    usage.total_tokens,
                )
            else:
                # The engine took the request: the head has gone out; there is nothing to show.
                continue
            sentence_id += 1
    finally:
        await outcome.aclose()


def _event(request_id: str, kind: str, sentence_id: int, piece: Piece) -> dict[str, Any]:
    if piece.error is not None:
        return render.error_body(piece.error, request_id)
    usage = piece.usage
    return {
        "id": request_id,
        "object": kind,
        "created": int(time.time()),
        "sentence_id": sentence_id,
        "is_end": piece.is_last,
        "is_truncated": piece.ending == "length",
        "result": piece.text,
        **render.safety_flags(piece.ending == "content_filter"),
        "usage": render.usage(usage.prompt_tokens, piece.completion_tokens, usage.total_tokens),
    }


@functools.cache
def _middle_format(kind: str) -> bytes:
    """`_event` of a piece before the last, as a format filled with (the request id and the
    text as `json_text` encodes them, the time, the sentence id, the text, the usage's prompt,
    completion and total tokens)."""
    return event_format(
        {
            "id": TEXT,
            "object": kind,
            "created": INT,
            "sentence_id": INT,
            "is_end": False,
            "is_truncated": False,
            "result": TEXT,
            **render.safety_flags(False),
            "usage": {"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT},
        }
    )


async def _single(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk
