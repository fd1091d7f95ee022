"""Builds the ASGI app from settings. The lifespan starts and stops the engines and the store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from qfserve.access.apps import AppRegistry
from qfserve.access.tokens import TokenIssuer
from qfserve.api import health
from qfserve.api.qianfan import render
from qfserve.api.qianfan import routes as qianfan_routes
from qfserve.api.qianfan.serving import QianfanServing
from qfserve.config import Settings
from qfserve.engines.registry import EngineRegistry
from qfserve.errors import InternalError, MethodNotAllowed, UnknownRoute
from qfserve.store.database import Database

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> tuple[Database, AppRegistry, TokenIssuer]:
    database = Database(settings.resolved_database_url)
    database.upgrade()
    return database, AppRegistry(database), TokenIssuer(database, settings.token_ttl_seconds)


def create_app(settings: Settings, engines: EngineRegistry | None = None) -> FastAPI:
    database, apps, tokens = open_store(settings)
    registry = engines or EngineRegistry.from_settings(settings.endpoints, settings.engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            await registry.close()
            await anyio.to_thread.run_sync(database.close)

    app = FastAPI(
        title="qfserve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    serving = QianfanServing(settings, tokens, registry)
    app.include_router(qianfan_routes.build_router(serving, apps, tokens))
    app.include_router(health.build_router(registry))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        # Qianfan answers unknown routes and wrong methods as errors in its own shape, HTTP 200.
        error = MethodNotAllowed() if exc.status_code == 405 else UnknownRoute()
        return render.error_response(error, render.new_request_id())

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        request_id = render.new_request_id()
        log.error("request %s failed: %r", request_id, exc, exc_info=exc)
        return render.error_response(InternalError(), request_id)

    return app
