"""Qianfan V2's response shapes: OpenAI's, with a safety flag and `ban_round` on every choice,
cached prompt tokens in the usage, Qianfan's error codes, and input/output rate-limit headers.

Safety flags (the spec's scale): 0 safe; 2 a flagged question, answered with the refusal (do not
continue the conversation); 3 a flagged answer replaced by the refusal (do not show it); 4 a
flagged answer cut off in a stream (retract what was shown).
"""

from __future__ import annotations

import secrets
from typing import Any

from qfserve.api.openai.render import OpenAIShape
from qfserve.errors import BodyTooLarge, QfserveError
from qfserve.serving.request import Ending, Refused, Usage

# The spec's statuses by code; a code not listed keeps the error's own status.
_STATUS = {
    "malformed_json": 400,
    "invalid_model": 400,
    "invalid_messages": 400,
    "characters_too_long": 400,
    "tokens_too_long": 400,
    "invalid_argument": 400,
    "invalid_iam_token": 401,
    "invalid_appid": 401,
    "no_parameter_permission": 401,
    "method_not_supported": 405,
    "rpm_rate_limit_exceeded": 429,
    "tpm_rate_limit_exceeded": 429,
    "internal_error": 500,
    "server_overloaded": 503,
    "service_unavailable": 503,
}
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
}
# qfserve's quota headers (the minute's windows; its token quota counts prompt and answer
# together) and their V2 names: the one token window stands for both input and output.
_HEADERS = {
    "X-Ratelimit-Limit-Requests": ("X-Ratelimit-Limit-Requests",),
    "X-Ratelimit-Remaining-Requests": ("X-Ratelimit-Remaining-Requests",),
    "X-Ratelimit-Limit-Tokens": (
        "X-Ratelimit-Limit-Input-Tokens",
        "X-Ratelimit-Limit-Output-Tokens",
    ),
    "X-Ratelimit-Remaining-Tokens": (
        "X-Ratelimit-Remaining-Input-Tokens",
        "X-Ratelimit-Remaining-Output-Tokens",
    ),
}


class QianfanV2Shape(OpenAIShape):
    def response_id(self, request_id: str) -> str:
        return request_id  # `as-...`, as Qianfan's

    def choice_flags(
        self, ending: Ending | None, refused: Refused | None, *, streamed: bool
    ) -> dict[str, Any]:
        if refused is not None:
            return {"flag": 2, "ban_round": refused.verdict.ban_round}
        if ending == "content_filter":
            return {"flag": 4 if streamed else 3, "ban_round": -1}
        return {"flag": 0, "ban_round": -1}

    def usage(self, usage: Usage) -> dict[str, Any]:
        return {
            **super().usage(usage),
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        }

    def headers(self, headers: dict[str, str] | None) -> dict[str, str] | None:
        if not headers:
            return headers
        return {v2: value for name, value in headers.items() for v2 in _HEADERS.get(name, (name,))}

    def error_status(self, error: QfserveError) -> int:
        if isinstance(error, BodyTooLarge):
            return error.http_status  # 413, as OpenAI's: the spec gives no status of its own
        return _STATUS.get(error.v2_code, error.http_status)

    def error_body(self, error: QfserveError, status: int) -> dict[str, Any]:
        request_id = error.request_id or "as-" + secrets.token_hex(5)
        return {
            "error": {
                "code": error.v2_code,
                "message": error.message,
                "type": _TYPES.get(status, "server_error"),
            },
            "id": request_id,
        }


QIANFAN_V2 = QianfanV2Shape()
