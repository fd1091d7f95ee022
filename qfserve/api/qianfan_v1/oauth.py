"""`/oauth/2.0/token`: an app's API Key and Secret Key exchanged for an access token (RFC 6749
client credentials, answered in Baidu's shape)."""

from __future__ import annotations

from urllib.parse import parse_qs

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from qfserve.access.apps import AppRegistry
from qfserve.access.attempts import TooManyFailedAttempts
from qfserve.access.secrets import SecretCheckThreads
from qfserve.access.tokens import TokenIssuer
from qfserve.api.qianfan_v1 import render
from qfserve.errors import OAuthError


def build_routes(
    apps: AppRegistry, tokens: TokenIssuer, secret_checks: SecretCheckThreads
) -> list[BaseRoute]:
    async def oauth_token(request: Request) -> Response:
        fields = {k: v for k, v in request.query_params.items()}
        if request.method == "POST":
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            fields.update({k: v[0] for k, v in form.items() if k not in fields})
        try:
            if fields.get("grant_type") != "client_credentials":
                raise OAuthError(
                    400, "unsupported_grant_type", "grant_type must be client_credentials"
                )
            client_id, secret = fields.get("client_id", ""), fields.get("client_secret", "")
            # Behind a proxy this is the proxy's address: its clients share one failure limit.
            address = request.client.host if request.client else ""
            # Refused at once rather than after a wait in the secret checks' queue.
            apps.check_attempts(client_id, address)
            app = await secret_checks.run(apps.authenticate, client_id, secret, address)
            issued = await anyio.to_thread.run_sync(tokens.issue, app.app_id)
        except TooManyFailedAttempts as error:
            refused = render.oauth_error_response(error)
            refused.headers["Retry-After"] = str(error.retry_after)
            return refused
        except OAuthError as error:
            return render.oauth_error_response(error)
        return render.json_response(
            {
                "refresh_token": issued.refresh_token,
                "expires_in": issued.expires_in,
                "session_key": issued.session_key,
                "access_token": issued.access_token,
                "scope": "public brain_all_scope wenxinworkshop_mgr ai_custom_yiyan_com",
                "session_secret": issued.session_secret,
            }
        )

    return [Route("/oauth/2.0/token", oauth_token, methods=["GET", "POST"])]
