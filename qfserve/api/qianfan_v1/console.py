"""The one console route the SDK calls in IAM mode: the list of served models.

With `QIANFAN_ACCESS_KEY`/`QIANFAN_SECRET_KEY`, the SDK asks the console base URL
(`QIANFAN_CONSOLE_API_BASE_URL`) for `/wenxinworkshop/service/list` to map model names to
endpoints. qfserve answers with the endpoints it serves, each under its service name.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from qfserve.access.gate import AccessGate
from qfserve.api.qianfan_v1 import render
from qfserve.api.qianfan_v1.routes import PREFIX, credentials
from qfserve.config import Settings
from qfserve.errors import QfserveError


def build_routes(settings: Settings, gate: AccessGate) -> list[BaseRoute]:
    async def service_list(request: Request) -> Response:
        log_id = secrets.token_hex(8)
        try:
            app = await gate.verify(credentials(request))
        except QfserveError as error:
            return render.json_response(
                {"error_code": error.code, "error_msg": error.message, "log_id": log_id}
            )
        base = str(request.base_url).rstrip("/")
        common = [
            {
                "name": endpoint.service_name,
                "url": f"{base}{PREFIX}/chat/{endpoint.name}",
                "apiType": "chat",
                "chargeStatus": "OPENED",
                "versionList": [{"trainType": endpoint.service_name, "serviceStatus": "Done"}],
            }
            for endpoint in settings.endpoints
            if app.may_use(endpoint.name)
        ]
        return render.json_response({"log_id": log_id, "result": {"common": common, "custom": []}})

    return [Route("/wenxinworkshop/service/list", service_list, methods=["POST"])]
