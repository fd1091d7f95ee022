"""`GET /v1/BCE-BEARER/token?expireInSeconds=N`: a request signed (bce-auth-v1) with an app's IAM
keys is answered with a bearer token for the V2 routes, as Baidu's IAM answers the qianfan SDK:
HTTP 201 and `{"userId","token","status","createTime","expireTime"}`."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from qfserve.access import signature
from qfserve.access.bearer_tokens import DEFAULT_LIFETIME_SECONDS, BearerTokens
from qfserve.access.gate import AccessGate, Credentials
from qfserve.api.qianfan_v1.render import new_request_id
from qfserve.api.responses import one_line
from qfserve.errors import (
    AppUnavailable,
    InternalError,
    InvalidArgument,
    QfserveError,
    SignatureInvalid,
)

log = logging.getLogger(__name__)

PATH = "/v1/BCE-BEARER/token"

# The V2 status and code of the errors this route raises, for those without a `v2_code` yet.
_V2_ANSWERS: tuple[tuple[type[QfserveError], int, str], ...] = (
    (SignatureInvalid, 401, "invalid_iam_token"),
    (AppUnavailable, 401, "invalid_iam_token"),
    (InvalidArgument, 400, "invalid_argument"),
)


def build_routes(gate: AccessGate, tokens: BearerTokens) -> list[BaseRoute]:
    async def bearer_token(request: Request) -> Response:
        request_id = new_request_id()
        try:
            authorization = request.headers.get("authorization", "")
            if not authorization.startswith(signature.PREFIX):
                raise SignatureInvalid("A bce-auth-v1 signature made with IAM keys is required")
            app = await gate.verify(
                Credentials(
                    access_token=None,
                    authorization=authorization,
                    method=request.method,
                    path=request.url.path,
                    query=tuple(request.query_params.multi_items()),
                    headers=tuple(request.headers.items()),
                )
            )
            lifetime = _lifetime(request.query_params.get("expireInSeconds"))
            minted = await anyio.to_thread.run_sync(tokens.mint, app.app_id, lifetime)
        except QfserveError as error:
            return error_response(error, request_id)
        except Exception:
            log.exception("request %s failed", request_id)
            return error_response(InternalError(), request_id)
        body = {
            "userId": str(app.app_id),
            "token": minted.token,
            "status": "enable",
            "createTime": _iso(minted.created_at),
            "expireTime": _iso(minted.expires_at),
        }
        return Response(one_line(body), status_code=201, media_type="application/json")

    return [Route(PATH, bearer_token, methods=["GET"])]


def _lifetime(asked: str | None) -> int:
    """The lifetime asked for, in seconds (the minting brings it within bounds)."""
    if asked is None or not asked.strip():
        return DEFAULT_LIFETIME_SECONDS
    try:
        return int(asked)
    except ValueError:
        raise InvalidArgument("expireInSeconds must be an integer number of seconds") from None


def _iso(unix_seconds: int) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_response(error: QfserveError, request_id: str) -> Response:
    """V2's error shape, with a real HTTP status."""
    status, code = 500, "internal_error"
    v2_code = getattr(error, "v2_code", None)
    if isinstance(v2_code, str):
        status, code = error.http_status, v2_code
    else:
        for kind, kind_status, kind_code in _V2_ANSWERS:
            if isinstance(error, kind):
                status, code = kind_status, kind_code
                break
    error_type = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"code": code, "message": error.message, "type": error_type}, "id": request_id}
    return Response(one_line(body), status_code=status, media_type="application/json")
