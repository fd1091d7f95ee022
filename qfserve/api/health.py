"""`GET /health`: 200 once an endpoint can serve (each endpoint's readiness in the body), 503
before the models are loaded, while shutting down, or when no endpoint can serve."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from qfserve.engines.registry import EngineRegistry


def build_routes(engines: EngineRegistry) -> list[BaseRoute]:
    async def health(_request: Request) -> JSONResponse:
        ready = engines.ready
        return JSONResponse(
            {"status": "ok" if ready else "unavailable", "endpoints": engines.endpoint_ready()},
            status_code=200 if ready else 503,
        )

    return [Route("/health", health, methods=["GET"])]
