"""Qianfan's response shapes: one-line JSON bodies and SSE events."""

from __future__ import annotations

import secrets
import string
from typing import Any

from starlette.responses import Response

from qfserve.api.responses import one_line
from qfserve.errors import OAuthError, QfserveError

STATEMENT = {"Statement": "AI-generated"}
STREAM_HEADERS = {**STATEMENT, "Cache-Control": "no-cache"}
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_request_id() -> str:
    """`as-` and 10 lowercase letters or digits, as Qianfan's ids.

    From one read of the system's randomness: `secrets.choice` per character read it ten times,
    19 us of every request. A byte modulo 36 favours the first four characters slightly, which
    an id's uniqueness does not mind."""
    return "as-" + "".join(_ID_ALPHABET[byte % 36] for byte in secrets.token_bytes(10))


def json_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(one_line(body), media_type="application/json", headers=headers)


def error_body(error: QfserveError, request_id: str) -> dict[str, Any]:
    return {"error_code": error.code, "error_msg": error.message, "id": request_id}


def error_response(error: QfserveError) -> Response:
    """The error as V1 answers it, with the id and rate-limit headers of the request it ended."""
    # HTTP 200 on purpose: on any other status the SDK loses its retry and token-refresh handling.
    request_id = error.request_id or new_request_id()
    return json_response(error_body(error, request_id), headers=error.headers)


def oauth_error_response(error: OAuthError) -> Response:
    return Response(
        one_line({"error": error.error, "error_description": error.description}),
        status_code=error.status,
        media_type="application/json",
    )


def usage(prompt_tokens: int, completion_tokens: int, total_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": total_tokens,
    }


def sse(body: dict[str, Any]) -> bytes:
    # Only `data: {json}` lines and blank lines: the SDK's parser knows nothing else.
    return b"data: " + one_line(body) + b"\n\n"


def safety_flags(flagged: bool, ban_round: int = -1) -> dict[str, Any]:
    """`need_clear_history`, and `ban_round` only when it is true (as Qianfan's bodies)."""
    if not flagged:
        return {"need_clear_history": False}
    return {"need_clear_history": True, "ban_round": ban_round}
