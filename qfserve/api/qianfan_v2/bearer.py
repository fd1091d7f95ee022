"""`GET /v1/BCE-BEARER/token?expireInSeconds=N`: a request signed (bce-auth-v1) with an app's IAM
keys is answered with a bearer token for the V2 routes, as Baidu's IAM answers the qianfan SDK:
HTTP 201 and `{"userId","token","status","createTime","expireTime"}`."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from qfserve.access import signature
from qfserve.access.bearer_tokens import DEFAULT_LIFETIME_SECONDS, BearerTokens
from qfserve.access.gate import AccessGate, Credentials
from qfserve.api.responses import one_line
from qfserve.errors import InvalidArgument, SignatureInvalid

PATH = "/v1/BCE-BEARER/token"


def build_routes(gate: AccessGate, tokens: BearerTokens) -> list[BaseRoute]:
    async def bearer_token(request: Request) -> Response:
        # Errors are raised: the app's handler answers them in V2's shape, real statuses.
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
