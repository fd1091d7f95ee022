"""`GET /health`: 200 once every endpoint's model is loaded, 503 before and while shutting down."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse

from qfserve.engines.registry import EngineRegistry


def build_router(engines: EngineRegistry) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> JSONResponse:
        ready = engines.ready
        return JSONResponse(
            {"status": "ok" if ready else "loading", "endpoints": engines.names()},
            status_code=200 if ready else 503,
        )

    return router
