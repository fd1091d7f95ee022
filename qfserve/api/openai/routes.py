"""OpenAI-compatible routes: `POST /v1/chat/completions` and `GET /v1/models`, with the same apps,
quotas, safety and usage ledger as the Qianfan routes. Errors in OpenAI's shape, real statuses."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from qfserve.access.gate import CLIENT_GONE, AccessGate, Call, Credentials
from qfserve.api.openai import render
from qfserve.api.openai.protocol import ChatCompletionRequest
from qfserve.api.qianfan_v1.render import new_request_id
from qfserve.api.responses import ClientGone, EventStreamResponse, until_disconnect
from qfserve.serving.chat import ChatServing, PreparedChat
from qfserve.chat.conversation import Message
from qfserve.chat.params import OPENAI, RequestedSampling
from qfserve.config import Settings
from qfserve.engines.base import Delta
from qfserve.errors import InternalError, InvalidArgument, InvalidJSON, QfserveError, RuleViolation

log = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


def build_routes(settings: Settings, serving: ChatServing, gate: AccessGate) -> list[BaseRoute]:
    async def models(request: Request) -> Response:
        try:
            app = await gate.verify(_credentials(request))
        except QfserveError as error:
            return render.error_response(error)
        created = int(time.time())
        data = [
            {"id": e.name, "object": "model", "created": created, "owned_by": "qfserve"}
            for e in settings.endpoints
            if app.may_use(e.name)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat_completions(request: Request) -> Response:
        request_id = new_request_id()
        call = gate.open_call(request_id, "unknown")
        try:
            app = await gate.authenticate(call, _credentials(request))
            body = await _parse(request)
            call.endpoint, call.user_id = body.model, body.user
            serving.endpoint(body.model)
            gate.permit(app, body.model)
            system, messages = _conversation(body)
            prepared = await serving.prepare(
                request_id, body.model, messages, system, _sampling(body), OPENAI
            )
            call.prompt_tokens = prepared.prompt_tokens
            await gate.admit(call, prepared.prompt_tokens + prepared.generation.sampling.max_tokens)
            verdict = await serving.screen(messages)
            response_id = render.completion_id()
            if verdict is not None:
                call.safety_category = verdict.hit.category
                await call.finish(0)
                return _refused(body, response_id, prepared, serving.refusal, call)
            if body.stream:
                deltas = serving.deltas(prepared)
                first = await until_disconnect(request.receive, anext(deltas))
                chunks = _chunks(body, response_id, prepared, first, deltas, call)
                return EventStreamResponse(chunks, headers=call.headers())
            text, tokens, finish = await until_disconnect(
                request.receive, _collect(serving.deltas(prepared))
            )
        except ClientGone:
            await call.finish(CLIENT_GONE)
            return Response(status_code=CLIENT_GONE)
        except QfserveError as error:
            await call.finish(error.code)
            return render.error_response(error, call.headers())
        except Exception:
            log.exception("request %s failed", request_id)
            await call.finish(InternalError.code)
            return render.error_response(InternalError())
        call.safety_category = prepared.flag.category
        flagged = call.safety_category is not None
        await call.finish(0, tokens)
        reason = "content_filter" if flagged else _FINISH[finish]
        content = serving.refusal if flagged else text
        return JSONResponse(
            render.completion(
                response_id, body.model, content, reason, prepared.prompt_tokens, tokens
            ),
            headers=call.headers(),
        )

    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]


def _credentials(request: Request) -> Credentials:
    authorization = request.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    bearer = value.strip() if scheme.lower() == "bearer" else None
    return Credentials(access_token=None, bearer=bearer or None)


async def _parse(request: Request) -> ChatCompletionRequest:
    # Parsed and validated in one pass by pydantic-core: a third of the time of json.loads and
    # then validating the Python objects.
    try:
        body = ChatCompletionRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise InvalidJSON() from exc
        if first["type"] == "model_type" and not first["loc"]:
            raise InvalidArgument("Invalid Argument: the body must be a JSON object") from exc
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidArgument(f"Invalid Argument: {where}: {first['msg']}") from exc
    if body.n not in (None, 1):
        raise RuleViolation("only n=1 is supported")
    return body


def _conversation(body: ChatCompletionRequest) -> tuple[str | None, list[Message]]:
    """System (and developer) messages become the system prompt; the rest the conversation."""
    system = [m.text() for m in body.messages if m.role in ("system", "developer")]
    messages = [
        Message(m.role, m.text()) for m in body.messages if m.role not in ("system", "developer")
    ]
    return ("\n\n".join(system) or None), messages


def _sampling(body: ChatCompletionRequest) -> RequestedSampling:
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


async def _collect(deltas: AsyncIterator[Delta]) -> tuple[str, int, str]:
    parts, tokens, finish = [], 0, "stop"
    async for delta in deltas:
        parts.append(delta.text)
        tokens += delta.token_count
        finish = delta.finish_reason or finish
    return "".join(parts), tokens, finish


def _refused(
    body: ChatCompletionRequest, response_id: str, prepared: PreparedChat, refusal: str, call: Call
) -> Response:
    prompt = prepared.prompt_tokens
    if not body.stream:
        completion = render.completion(
            response_id, body.model, refusal, "content_filter", prompt, 0
        )
        return JSONResponse(completion, headers=call.headers())

    async def chunks() -> AsyncIterator[bytes]:
        yield render.chunk(response_id, body.model, {"role": "assistant", "content": refusal})
        yield render.chunk(response_id, body.model, {}, "content_filter")
        if body.stream_options and body.stream_options.include_usage:
            yield render.usage_chunk(response_id, body.model, prompt, 0)
        yield render.DONE

    return EventStreamResponse(chunks(), headers=call.headers())


async def _chunks(
    body: ChatCompletionRequest,
    response_id: str,
    prepared: PreparedChat,
    first: Delta,
    rest: AsyncIterator[Delta],
    call: Call,
) -> AsyncIterator[bytes]:
    model, outcome, tokens = body.model, CLIENT_GONE, 0
    # Events due together go out in one write: the role's chunk with the first token's, the
    # finish with the usage and [DONE]. A write is a system call and a wake-up of the client.
    head = render.chunk(response_id, model, {"role": "assistant", "content": ""})
    try:
        delta: Delta | None = first
        while delta is not None:
            tokens += delta.token_count
            out, head = head, b""
            if delta.text:
                out += render.chunk(response_id, model, {"content": delta.text})
            if delta.finish_reason is not None:
                call.safety_category = prepared.flag.category
                flagged = call.safety_category is not None
                reason = "content_filter" if flagged else _FINISH[delta.finish_reason]
                out += render.chunk(response_id, model, {}, reason)
                if body.stream_options and body.stream_options.include_usage:
                    out += render.usage_chunk(response_id, model, prepared.prompt_tokens, tokens)
                yield out + render.DONE
                outcome = 0
                return
            if out:
                yield out
            delta = await anext(rest, None)
    except QfserveError as error:
        outcome = error.code
        error_event = {"error": {"message": error.message, "code": str(error.code)}}
        yield head + render.sse(error_event) + render.DONE
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
        await call.finish(outcome, tokens)
