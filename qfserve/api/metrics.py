"""`GET /metrics` in Prometheus's text format."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from qfserve.metrics import Metrics


def build_router(metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics")
    async def scrape() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
