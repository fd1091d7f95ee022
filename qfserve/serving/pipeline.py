"""The one request pipeline: every dialect's chat call runs these steps, in this order.

    authenticate → parse → endpoint → permit → fit the conversation (and shape the answer) → admit
    → screen the question → generate → settle the call (quotas, ledger, metrics)

Everything that can refuse a request does so before the first byte of its answer; a stream's first
piece is produced before the pipeline returns it. A call is settled exactly once, whatever happens,
and before the answer's last piece is handed to the dialect: a client that received an answer
finds it in the usage ledger. Errors are raised from the one error tree (`qfserve.errors`), each
carrying the request's id and rate-limit headers for the dialect that renders it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from qfserve.access.gate import CLIENT_GONE, AccessGate, Call, Credentials
from qfserve.chat.tools import tool_use
from qfserve.errors import InternalError, QfserveError
from qfserve.serving.chat import ChatServing
from qfserve.serving.prepared import PreparedChat
from qfserve.serving.request import (
    ChatRequest,
    Completed,
    Outcome,
    Piece,
    Refused,
    Streaming,
    Usage,
)

log = logging.getLogger(__name__)


class ChatPipeline:
    def __init__(self, serving: ChatServing, gate: AccessGate) -> None:
        self._serving = serving
        self._gate = gate

    async def run(
        self, request_id: str, credentials: Credentials, parse: Callable[[], ChatRequest]
    ) -> Outcome:
        """Run one chat call. `parse` turns the dialect's body into the request; it runs once
        the caller is known, so an anonymous caller learns nothing about the body's faults.

        Cancelling this (the client went away) aborts the generation and settles the call."""
        call = self._gate.open_call(request_id, "unknown")
        try:
            app = await self._gate.authenticate(call, credentials)
            chat = parse()
            call.endpoint, call.user_id = chat.endpoint, chat.user_id
            if self._gate.records_text:
                call.question = _question(chat)
            self._serving.endpoint(chat.endpoint)
            self._gate.permit(app, chat.endpoint)
            tools = tool_use(chat.tools, chat.tool_choice, chat.parallel_tool_calls)
            prepared = await self._serving.prepare(
                request_id,
                chat.endpoint,
                chat.messages,
                chat.system,
                chat.sampling,
                chat.rules,
                tools,
                json_format=chat.json_format,
            )
            call.prompt_tokens = prepared.prompt_tokens
            await self._gate.admit(
                call, prepared.prompt_tokens + prepared.generation.sampling.max_tokens
            )
            verdict = await self._serving.screen(chat.messages)
            if verdict is not None:
                call.safety_category = verdict.hit.category
                if call.question is not None:
                    call.answer = self._serving.refusal
                await call.finish(0)
                usage = Usage(prepared.prompt_tokens)
                return Refused(
                    chat, request_id, self._serving.refusal, verdict, usage, call.headers()
                )
            if chat.stream:
                return await self._stream(call, chat, prepared)
            answer = await self._serving.answer(prepared)
            call.safety_category = prepared.tally.category
            call.prompt_tokens = answer.usage.prompt_tokens
            if call.question is not None:
                call.answer = answer.text
            await call.finish(0, answer.usage.completion_tokens)
            return Completed(
                chat,
                request_id,
                answer.text,
                answer.ending,
                answer.usage,
                call.headers(),
                answer.tool_calls,
            )
        except QfserveError as error:
            await call.finish(error.code)
            raise error.at(request_id, call.headers()) from None
        except asyncio.CancelledError:
            log.info("request %s: client went away before the answer", request_id)
            await call.finish(CLIENT_GONE)
            raise
        except Exception as exc:
            log.error("request %s failed", request_id, exc_info=exc)
            await call.finish(InternalError.code)
            raise InternalError().at(request_id, call.headers()) from exc

    async def _stream(self, call: Call, chat: ChatRequest, prepared: PreparedChat) -> Streaming:
        pieces = (
            self._serving.segments(prepared) if chat.segmented else self._serving.pieces(prepared)
        )
        try:
            first = await anext(pieces)
        except BaseException:
            await pieces.aclose()
            raise

        async def abandon() -> None:
            # Also when the pieces were never read: a generator not started runs no `finally`.
            await pieces.aclose()
            await call.finish(CLIENT_GONE)

        settled = _settled(call, prepared, first, pieces)
        return Streaming(
            chat, call.request_id, settled, prepared.prompt_tokens, call.headers(), abandon
        )


async def _settled(
    call: Call, prepared: PreparedChat, first: Piece, rest: AsyncGenerator[Piece]
) -> AsyncIterator[Piece]:
    """The pieces, the call settled before the last one is handed on (or, if the stream is
    abandoned, as the client's leaving)."""
    completion = 0
    # The answer's text, kept only for a request log that records it.
    texts: list[str] | None = [] if call.question is not None else None
    try:
        piece: Piece | None = first
        while piece is not None:
            completion = piece.usage.completion_tokens
            if texts is not None:
                texts.append(piece.text)
                if piece.is_last:
                    call.answer = "".join(texts)
            if piece.is_last:
                call.safety_category = prepared.tally.category
                call.prompt_tokens = piece.usage.prompt_tokens
                code = piece.error.code if piece.error is not None else 0
                await call.finish(code, completion)
            yield piece
            if piece.is_last:
                return
            piece = await anext(rest, None)
        # The source ended without a last piece: settle as a finished answer.
        if texts is not None:
            call.answer = "".join(texts)
        await call.finish(0, completion)
    finally:
        await rest.aclose()
        if texts is not None and call.answer is None:
            call.answer = "".join(texts)  # what the client had when it left
        await call.finish(CLIENT_GONE, completion)


def _question(chat: ChatRequest) -> str:
    """The last user message: what the request log shows as the question."""
    return next((m.content for m in reversed(chat.messages) if m.role == "user"), "")
