"""`GET /health`: 200 once an endpoint can serve (each endpoint's readiness in the body), 503
before the models are loaded, while shutting down ("draining"), or when no endpoint can serve."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from qfserve.engines.registry import EngineRegistry


def build_routes(
    engines: EngineRegistry, draining: Callable[[], bool] = lambda: False
) -> list[BaseRoute]:
    async def health(_request: Request) -> JSONResponse:
        # Draining first: the engines may still look ready until the drain reaches them.
        status = "draining" if draining() else "ok" if engines.ready else "unavailable"
        return JSONResponse(
            {"status": status, "endpoints": engines.endpoint_ready()},
            status_code=200 if status == "ok" else 503,
        )

    return [Route("/health", health, methods=["GET"])]
