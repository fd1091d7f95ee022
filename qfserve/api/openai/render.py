"""OpenAI's response shapes: completions, stream chunks, errors with real HTTP statuses."""

from __future__ import annotations

import secrets
import time
from typing import Any

from starlette.responses import JSONResponse, Response

from qfserve.api.responses import one_line
from qfserve.errors import QfserveError

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def error_response(error: QfserveError, headers: dict[str, str] | None = None) -> Response:
    status = error.http_status
    body = {
        "error": {
            "message": error.message,
            "type": _ERROR_TYPES.get(status, "server_error"),
            "param": None,
            # The Qianfan code too: the same error means the same thing on both routes.
            "code": str(error.code),
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion(
    response_id: str, model: str, text: str, finish_reason: str, prompt: int, completion: int
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt, completion),
    }


def chunk(
    response_id: str,
    model: str,
    delta: dict[str, str],
    finish_reason: str | None = None,
) -> bytes:
    body = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return sse(body)


def usage_chunk(response_id: str, model: str, prompt: int, completion: int) -> bytes:
    body = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(prompt, completion),
    }
    return sse(body)


def sse(body: dict[str, Any]) -> bytes:
    return b"data: " + one_line(body) + b"\n\n"


DONE = b"data: [DONE]\n\n"
