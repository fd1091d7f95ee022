"""OpenAI's response shapes: completions, stream chunks, errors with real HTTP statuses.

Qianfan V2 answers in the same shapes with a few additions (safety flags per choice, cached prompt
tokens, its own error codes and rate-limit headers): it subclasses `OpenAIShape`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.responses import JSONResponse, Response

from qfserve.api.responses import INT, TEXT, EventStreamResponse, event_format, json_text, one_line
from qfserve.chat.formats import ToolCall
from qfserve.errors import QfserveError
from qfserve.serving.request import Completed, Ending, Outcome, Refused, Streaming, Usage

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

DONE = b"data: [DONE]\n\n"


def sse(body: dict[str, Any]) -> bytes:
    return b"data: " + one_line(body) + b"\n\n"


class OpenAIShape:
    """How one OpenAI-shaped dialect renders outcomes and errors. The hooks are what differs."""

    id_prefix = "chatcmpl-"

    def __init__(self) -> None:
        self._text_formats: dict[str, bytes] = {}  # by model

    def response_id(self, request_id: str) -> str:
        return self.id_prefix + secrets.token_hex(12)

    def choice_flags(
        self, ending: Ending | None, refused: Refused | None, *, streamed: bool
    ) -> dict[str, Any]:
        """Fields a choice carries besides the standard ones."""
        return {}

    def usage(self, usage: Usage) -> dict[str, Any]:
        return {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }

    def headers(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        return headers

    def error_status(self, error: QfserveError) -> int:
        return error.http_status

    def error_body(self, error: QfserveError, status: int) -> dict[str, Any]:
        return {
            "error": {
                "message": error.message,
                "type": _ERROR_TYPES.get(status, "server_error"),
                "param": None,
                # The Qianfan code too: the same error means the same thing on every route.
                "code": str(error.code),
            }
        }

    # What follows is the same for every OpenAI-shaped dialect.

    def error_response(self, error: QfserveError) -> Response:
        status = self.error_status(error)
        body = self.error_body(error, status)
        return JSONResponse(body, status_code=status, headers=self.headers(error.headers))

    def render(self, outcome: Outcome) -> Response:
        headers = self.headers(outcome.headers)
        if isinstance(outcome, Streaming):
            return EventStreamResponse(self._chunks(outcome), headers=headers)
        if outcome.request.stream:
            return EventStreamResponse(self._whole_as_stream(outcome), headers=headers)
        response_id = self.response_id(outcome.request_id)
        if isinstance(outcome, Refused):
            body = self.completion(response_id, outcome, outcome.text, "content_filter", outcome)
        else:
            body = self.completion(response_id, outcome, outcome.text, outcome.ending)
            if outcome.tool_calls:
                message = body["choices"][0]["message"]
                message["content"] = outcome.text or None
                message["tool_calls"] = tool_calls(outcome.tool_calls)
        return JSONResponse(body, headers=headers)

    def completion(
        self,
        response_id: str,
        outcome: Completed | Refused,
        text: str,
        ending: Ending,
        refused: Refused | None = None,
    ) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": outcome.request.endpoint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": ending,
                    **self.choice_flags(ending, refused, streamed=False),
                }
            ],
            "usage": self.usage(outcome.usage),
        }

    def chunk(
        self,
        response_id: str,
        model: str,
        delta: dict[str, Any],
        ending: Ending | None = None,
        refused: Refused | None = None,
    ) -> bytes:
        return sse(self.chunk_body(response_id, model, delta, ending, refused))

    def chunk_body(
        self,
        response_id: str,
        model: str,
        delta: dict[str, Any],
        ending: Ending | None = None,
        refused: Refused | None = None,
    ) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": ending}
        return {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{**choice, **self.choice_flags(ending, refused, streamed=True)}],
        }

    def text_format(self, model: str) -> bytes:
        """The format of a stream's chunks of text, filled with (the response id and the text as
        `json_text` encodes them, the time): the same bytes as `chunk` with `{"content": text}`.
        Made once per model: the models are the configured endpoints."""
        text_format = self._text_formats.get(model)
        if text_format is None:
            body = self.chunk_body("", model, {"content": TEXT})
            text_format = event_format({**body, "id": TEXT, "created": INT})
            self._text_formats[model] = text_format
        return text_format

    def usage_chunk(self, response_id: str, model: str, usage: Usage) -> bytes:
        body = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [],
            "usage": self.usage(usage),
        }
        return sse(body)

    def stream_error(self, error: QfserveError) -> bytes:
        return sse(self.error_body(error, self.error_status(error)))

    async def _whole_as_stream(self, outcome: Completed | Refused) -> AsyncIterator[bytes]:
        """An answer known whole before its stream began (a refused question): the text, the
        finish and the usage in one write."""
        response_id, model = self.response_id(outcome.request_id), outcome.request.endpoint
        refused = outcome if isinstance(outcome, Refused) else None
        ending = outcome.ending if isinstance(outcome, Completed) else "content_filter"
        delta = {"role": "assistant", "content": outcome.text}
        out = self.chunk(response_id, model, delta, refused=refused)
        if isinstance(outcome, Completed) and outcome.tool_calls:
            calls = {"tool_calls": tool_calls(outcome.tool_calls, indexed=True)}
            out += self.chunk(response_id, model, calls)
        out += self.chunk(response_id, model, {}, ending, refused)
        if outcome.request.include_usage:
            out += self.usage_chunk(response_id, model, outcome.usage)
        yield out + DONE

    async def _chunks(self, outcome: Streaming) -> AsyncIterator[bytes]:
        response_id, model = self.response_id(outcome.request_id), outcome.request.endpoint
        # Events due together go out in one write: the role's chunk with the first token's, the
        # finish with the usage and [DONE]. A write is a system call and a wake-up of the client.
        head = self.chunk(response_id, model, {"role": "assistant", "content": ""})
        # The chunks of text, most of the stream, from a format: only their text is rendered.
        text_format, quoted_id = self.text_format(model), json_text(response_id)
        try:
            async for piece in outcome.pieces:
                out, head = head, b""
                if piece.text:
                    out += text_format % (quoted_id, int(time.time()), json_text(piece.text))
                if piece.error is not None:
                    yield out + self.stream_error(piece.error) + DONE
                    return
                if piece.tool_calls:
                    calls = {"tool_calls": tool_calls(piece.tool_calls, indexed=True)}
                    out += self.chunk(response_id, model, calls)
                if piece.ending is not None:
                    out += self.chunk(response_id, model, {}, piece.ending)
                    if outcome.request.include_usage:
                        out += self.usage_chunk(response_id, model, piece.usage)
                    yield out + DONE
                    return
                if out:
                    yield out
        finally:
            await outcome.aclose()


def tool_calls(calls: Sequence[ToolCall], *, indexed: bool = False) -> list[dict[str, Any]]:
    """Calls as a message carries them; in a stream's delta each with its `index` too (the
    whole call in one delta: its arguments are known only once the answer is complete)."""
    return [
        {
            **({"index": index} if indexed else {}),
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for index, call in enumerate(calls)
    ]


OPENAI = OpenAIShape()
