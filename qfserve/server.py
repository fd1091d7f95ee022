"""Builds the ASGI app from settings. The lifespan starts and stops the engines and the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from qfserve.access.app_keys import AppKeys
from qfserve.access.apps import AppRegistry
from qfserve.access.gate import AccessGate
from qfserve.access.iam_keys import IamKeys, load_master_key
from qfserve.access.quota import QuotaEnforcer, QuotaLimits
from qfserve.access.tokens import TokenIssuer
from qfserve.access.usage import UsageLedger
from qfserve.api import health
from qfserve.api import metrics as metrics_route
from qfserve.api.openai import routes as openai_routes
from qfserve.api.qianfan_v1 import console as console_routes
from qfserve.api.qianfan_v1 import oauth as oauth_routes
from qfserve.api.qianfan_v1 import render
from qfserve.api.qianfan_v1 import routes as qianfan_routes
from qfserve.serving.chat import ChatServing
from qfserve.chat.safety import ModeratorSource
from qfserve.config import Settings
from qfserve.engines.registry import EngineRegistry
from qfserve.errors import EngineUnavailable, InternalError, MethodNotAllowed, UnknownRoute
from qfserve.metrics import Metrics
from qfserve.process import Service
from qfserve.store.database import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Store:
    database: Database
    apps: AppRegistry
    tokens: TokenIssuer
    iam_keys: IamKeys
    app_keys: AppKeys


def open_store(settings: Settings) -> Store:
    """The store, its schema brought up to date first."""
    database = Database(settings.resolved_database_url)
    database.upgrade()
    master_key = load_master_key(settings.master_key, settings.master_key_file)
    return Store(
        database,
        AppRegistry(database),
        TokenIssuer(database, settings.token_ttl_seconds),
        IamKeys(database, master_key),
        AppKeys(database),
    )


async def _restore_totals(
    store: Store, ledger: UsageLedger, quotas: QuotaEnforcer, defaults: QuotaLimits
) -> None:
    """Total quotas outlive the process: counters in memory start from the usage ledger's count
    (and Redis's are raised to it, should Redis have lost them)."""
    apps = await anyio.to_thread.run_sync(store.apps.all)
    limited = [a for a in apps if (a.quota["total"] or defaults.total)]
    if not limited:
        return
    counts = await anyio.to_thread.run_sync(ledger.admitted_counts)
    for app in limited:
        if counts.get(app.app_id):
            try:
                await quotas.restore_total(app.app_id, counts[app.app_id])
            except EngineUnavailable:
                log.warning("app %s: total quota not restored, the quota store is down", app.app_id)


async def _reload_lists(moderators: ModeratorSource | None, every: float) -> None:
    """Safety lists edited on disk take effect without a restart (built off the event loop)."""
    while moderators is not None:
        await asyncio.sleep(every)
        await anyio.to_thread.run_sync(moderators.reload_if_changed)


def create_app(settings: Settings, engines: EngineRegistry | None = None) -> Service:
    store = open_store(settings)
    registry = engines or EngineRegistry.from_settings(settings.endpoints, settings.engine)
    ledger = UsageLedger(store.database)
    quota = settings.quota
    quotas = QuotaEnforcer.from_url(
        settings.redis_url,
        failure=quota.redis_failure,
        processes=quota.gateway_processes,
        timeout_seconds=quota.redis_timeout_seconds,
        retry_seconds=quota.redis_retry_seconds,
    )
    default_limits = QuotaLimits.from_config(
        qps=quota.qps, rpm=quota.rpm, tpm=quota.tpm, daily=quota.daily, total=quota.total
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        ledger.start()
        await quotas.prepare()
        await _restore_totals(store, ledger, quotas, default_limits)
        await registry.start()
        service.attach(asyncio.get_running_loop())
        reloading = asyncio.create_task(_reload_lists(moderators, settings.safety.reload_seconds))
        try:
            yield
        finally:
            reloading.cancel()
            await registry.close()
            # After the engines: every finished call has queued its usage row by now.
            await anyio.to_thread.run_sync(ledger.close)
            await quotas.close()
            await anyio.to_thread.run_sync(store.database.close)

    metrics = Metrics(registry, quotas.health)
    gate = AccessGate(
        store.tokens,
        store.iam_keys,
        store.app_keys,
        ledger,
        metrics,
        quotas,
        default_limits,
        inline_lookups=store.database.is_sqlite,
        log_requests=settings.log_requests,
    )
    moderators = (
        ModeratorSource(
            settings.safety_list_files,
            check_seconds=settings.safety.reload_seconds,
            disabled=settings.safety.disabled_categories,
        )
        if settings.safety.enabled
        else None
    )
    serving = ChatServing(settings, registry, metrics, moderators)
    # A Starlette app with plain routes in one list, the chat routes first. Every handler takes
    # a Request and returns a Response: FastAPI's layer on top (dependencies, per-route models,
    # its telemetry check and three more middlewares on every request) had nothing to do here,
    # and cost about 0.1 ms of CPU per proxied request.
    routes = [
        *qianfan_routes.build_routes(serving, gate),
        *oauth_routes.build_routes(store.apps, store.tokens),
        *openai_routes.build_routes(settings, serving, gate),
        *console_routes.build_routes(settings, gate),
        *health.build_routes(registry),
        *metrics_route.build_routes(metrics),
    ]

    async def http_error(_request: Request, exc: Exception) -> Response:
        # Qianfan answers unknown routes and wrong methods as errors in its own shape, HTTP 200.
        # Only HTTPExceptions come here; Starlette's handler type is for any exception.
        wrong_method = isinstance(exc, HTTPException) and exc.status_code == 405
        error = MethodNotAllowed() if wrong_method else UnknownRoute()
        return render.error_response(error, render.new_request_id())

    async def unexpected(_request: Request, exc: Exception) -> Response:
        request_id = render.new_request_id()
        log.error("request %s failed: %r", request_id, exc, exc_info=exc)
        return render.error_response(InternalError(), request_id)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: unexpected},
    )
    service = Service(app, registry, settings.shutdown_grace_seconds)
    return service
