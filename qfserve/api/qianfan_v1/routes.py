"""Qianfan's routes: parse the request, call the serving layer, render. No logic beyond that."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from qfserve.access.gate import CLIENT_GONE, AccessGate, Call, Credentials
from qfserve.api.qianfan_v1 import render
from qfserve.api.qianfan_v1.protocol import ChatBody, CompletionBody, SamplingFields, TokenizerBody
from qfserve.api.responses import ClientGone, EventStreamResponse, until_disconnect
from qfserve.serving.chat import ChatServing, PreparedChat, StreamEvent
from qfserve.chat.conversation import Message
from qfserve.chat.params import RequestedSampling
from qfserve.chat.safety import Verdict
from qfserve.errors import (
    InternalError,
    InvalidArgument,
    InvalidJSON,
    QfserveError,
)

log = logging.getLogger(__name__)

PREFIX = "/rpc/2.0/ai_custom/v1/wenxinworkshop"
Body = TypeVar("Body", bound=BaseModel)


def build_routes(serving: ChatServing, gate: AccessGate) -> list[BaseRoute]:
    async def chat(request: Request) -> Response:
        async def parse() -> tuple[ChatBody, list[Message]]:
            body = await _parse(request, ChatBody)
            return body, [Message(m.role, m.content) for m in body.messages]

        return await _chat_flow(request, parse, "chat.completion")

    async def completions(request: Request) -> Response:
        async def parse() -> tuple[CompletionBody, list[Message]]:
            body = await _parse(request, CompletionBody)
            return body, [Message("user", body.prompt)]

        return await _chat_flow(request, parse, "completion")

    async def tokenizer(request: Request) -> Response:
        request_id = render.new_request_id()
        try:
            await gate.verify(credentials(request))
            body = await _parse(request, TokenizerBody)
            count = serving.tokenize(body.model or serving.default_endpoint, body.prompt)
        except QfserveError as error:
            return render.error_response(error, request_id)
        return render.json_response(
            {
                "id": request_id,
                "object": "tokenizer.erniebot",
                "created": int(time.time()),
                "usage": render.usage(count, 0, count),
            }
        )

    async def _chat_flow(request: Request, parse: Any, kind: str) -> Response:
        endpoint: str = request.path_params["endpoint"]
        request_id = render.new_request_id()
        call = gate.open_call(request_id, endpoint)
        try:
            # Who is calling, what may they do, is the request sound, may it run now: all of it
            # before the first byte of any answer.
            app = await gate.authenticate(call, credentials(request))
            serving.endpoint(endpoint)
            gate.permit(app, endpoint)
            body, messages = await parse()
            call.user_id = body.user_id
            system = body.system if isinstance(body, ChatBody) else None
            prepared = await serving.prepare(
                request_id, endpoint, messages, system, _sampling(body)
            )
            call.prompt_tokens = prepared.prompt_tokens
            await gate.admit(call, prepared.prompt_tokens + prepared.generation.sampling.max_tokens)
            verdict = await serving.screen(messages)
            if verdict is not None:
                # No generation: the refusal, flagged, with the prompt's usage only.
                call.safety_category = verdict.hit.category
                await call.finish(0)
                refusal = _refusal_body(
                    request_id, kind, prepared, verdict, serving.refusal, body.stream
                )
                if body.stream:
                    return EventStreamResponse(
                        _single(render.sse(refusal)),
                        headers={**render.STREAM_HEADERS, **call.headers()},
                    )
                return render.json_response(refusal, headers={**render.STATEMENT, **call.headers()})
            if body.stream:
                events = serving.stream(prepared)
                first = await until_disconnect(request.receive, anext(events))
                return EventStreamResponse(
                    _sse(request_id, kind, prepared, first, events, call),
                    headers={**render.STREAM_HEADERS, **call.headers()},
                )
            answer = await until_disconnect(request.receive, serving.answer(prepared))
        except ClientGone:
            log.info("request %s: client went away before the answer", request_id)
            await call.finish(CLIENT_GONE)
            return Response(status_code=CLIENT_GONE)
        except QfserveError as error:
            await call.finish(error.code)
            return render.error_response(error, request_id, headers=call.headers())
        except Exception:
            log.exception("request %s failed", request_id)
            await call.finish(InternalError.code)
            return render.error_response(InternalError(), request_id)
        call.safety_category = prepared.flag.category
        call.prompt_tokens = answer.prompt_tokens  # a remote upstream's own count, if it gave one
        await call.finish(0, answer.completion_tokens)
        return render.json_response(
            {
                "id": request_id,
                "object": kind,
                "created": int(time.time()),
                "result": answer.text,
                "is_truncated": answer.is_truncated,
                **render.safety_flags(answer.flagged),
                "usage": render.usage(
                    answer.prompt_tokens,
                    answer.completion_tokens,
                    answer.prompt_tokens + answer.completion_tokens,
                ),
            },
            headers={**render.STATEMENT, **call.headers()},
        )

    # The chat route first: routes are matched in order.
    return [
        Route(PREFIX + "/chat/{endpoint}", chat, methods=["POST"]),
        Route(PREFIX + "/completions/{endpoint}", completions, methods=["POST"]),
        Route(PREFIX + "/tokenizer/erniebot", tokenizer, methods=["POST"]),
    ]


def credentials(request: Request) -> Credentials:
    return Credentials(
        access_token=request.query_params.get("access_token"),
        authorization=request.headers.get("authorization"),
        method=request.method,
        path=request.url.path,
        query=tuple(request.query_params.multi_items()),
        headers=tuple(request.headers.items()),
    )


def _sampling(body: SamplingFields) -> RequestedSampling:
    return RequestedSampling(
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        penalty_score=body.penalty_score,
        stop=body.stop,
        max_output_tokens=body.max_output_tokens,
        seed=body.seed,
    )


async def _parse(request: Request, model: type[Body]) -> Body:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidJSON() from exc
    if not isinstance(data, dict):
        raise InvalidArgument("Invalid Argument: the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidArgument(f"Invalid Argument: {where}: {first['msg']}") from exc


async def _sse(
    request_id: str,
    kind: str,
    prepared: PreparedChat,
    first: StreamEvent,
    rest: AsyncIterator[StreamEvent],
    call: Call,
) -> AsyncIterator[bytes]:
    outcome, generated = CLIENT_GONE, 0  # unless the stream reaches its end
    try:
        event: StreamEvent | None = first
        while event is not None:
            generated += event.completion_tokens
            if event.error is not None:
                outcome = event.error.code
            elif event.is_end:
                outcome = 0
            call.safety_category = prepared.flag.category
            yield render.sse(_event_body(request_id, kind, prepared, event))
            event = await anext(rest, None)
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
        await call.finish(outcome, generated)


def _event_body(
    request_id: str, kind: str, prepared: PreparedChat, event: StreamEvent
) -> dict[str, Any]:
    if event.error is not None:
        return render.error_body(event.error, request_id)
    return {
        "id": request_id,
        "object": kind,
        "created": int(time.time()),
        "sentence_id": event.sentence_id,
        "is_end": event.is_end,
        "is_truncated": event.is_truncated,
        "result": event.text,
        **render.safety_flags(event.flagged),
        "usage": render.usage(prepared.prompt_tokens, event.completion_tokens, event.total_tokens),
    }


def _refusal_body(
    request_id: str,
    kind: str,
    prepared: PreparedChat,
    verdict: Verdict,
    refusal: str,
    stream: bool | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"id": request_id, "object": kind, "created": int(time.time())}
    if stream:
        body.update(sentence_id=0, is_end=True)
    return {
        **body,
        "result": refusal,
        "is_truncated": False,
        **render.safety_flags(True, verdict.ban_round),
        "usage": render.usage(prepared.prompt_tokens, 0, prepared.prompt_tokens),
    }


async def _single(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk
