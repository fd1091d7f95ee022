"""Builds the ASGI app from settings. The lifespan starts and stops the engines and the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware

from qfserve.access.app_keys import AppKeys
from qfserve.access.apps import AppRegistry
from qfserve.access.attempts import FailedAttempts, Rate
from qfserve.access.bearer_tokens import BearerTokens
from qfserve.access.gate import AccessGate
from qfserve.access.iam_keys import IamKeys, load_master_key
from qfserve.access.quota import QuotaEnforcer, QuotaLimits
from qfserve.access.secrets import SecretCheckThreads
from qfserve.access.tokens import TokenIssuer
from qfserve.access.usage import RequestLogOptions, UsageLedger
from qfserve.access.v2_keys import V2Keys
from qfserve.admin.endpoints import ServingState, serving_state
from qfserve.admin.request_log import keep_pruned, pruner_for
from qfserve.admin.services import admin_services
from qfserve.api import admin as admin_api
from qfserve.api import errors as api_errors
from qfserve.api import health
from qfserve.api import metrics as metrics_route
from qfserve.api.openai import routes as openai_routes
from qfserve.api.qianfan_v1 import console as console_routes
from qfserve.api.qianfan_v1 import oauth as oauth_routes
from qfserve.api.qianfan_v1 import routes as qianfan_routes
from qfserve.api.qianfan_v2 import bearer as bearer_routes
from qfserve.api.qianfan_v2 import routes as v2_routes
from qfserve.chat.safety import ModeratorSource
from qfserve.config import Settings
from qfserve.engines.registry import EngineRegistry
from qfserve.errors import EngineUnavailable
from qfserve.metrics import Metrics
from qfserve.process import Service
from qfserve.serving.chat import ChatServing
from qfserve.serving.pipeline import ChatPipeline
from qfserve.store.database import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Store:
    database: Database
    apps: AppRegistry
    tokens: TokenIssuer
    iam_keys: IamKeys
    app_keys: AppKeys
    v2_keys: V2Keys
    bearer_tokens: BearerTokens


def open_store(settings: Settings) -> Store:
    """The store, its schema brought up to date first."""
    master_key = load_master_key(settings.master_key, settings.master_key_file)
    database = Database(settings.resolved_database_url)
    database.upgrade()
    auth = settings.auth
    attempts = FailedAttempts(
        per_client_id=Rate(auth.max_failures_per_client_id, auth.failure_window_seconds),
        per_address=Rate(auth.max_failures_per_address, auth.failure_window_seconds),
    )
    return Store(
        database,
        AppRegistry(database, attempts=attempts),
        TokenIssuer(database, settings.token_ttl_seconds),
        IamKeys(database, master_key),
        AppKeys(database),
        V2Keys(database),
        BearerTokens(database),
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
    registry = engines or EngineRegistry.from_settings(
        settings.endpoints, settings.engine, settings.data_dir
    )
    logged = settings.request_log
    ledger = UsageLedger(
        store.database,
        request_log=RequestLogOptions(logged.enabled, logged.record_text, logged.max_text_chars),
    )
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
        pruning = (
            asyncio.create_task(
                keep_pruned(pruner_for(settings, store.database), logged.prune_interval_seconds)
            )
            if logged.enabled
            else None
        )
        try:
            yield
        finally:
            # Cancelled and awaited: a prune running in a worker thread finishes before the
            # database closes under it.
            for job in (reloading, pruning):
                if job is not None:
                    job.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await job
            await registry.close()
            # After the engines: every finished call has queued its usage row by now.
            await anyio.to_thread.run_sync(ledger.close)
            await quotas.close()
            secret_checks.close()
            await anyio.to_thread.run_sync(store.database.close)

    metrics = Metrics(registry, quotas.health)
    secret_checks = SecretCheckThreads(settings.auth.secret_check_threads)
    gate = AccessGate(
        store.tokens,
        store.iam_keys,
        store.app_keys,
        ledger,
        metrics,
        quotas,
        default_limits,
        v2_keys=store.v2_keys,
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
    pipeline = ChatPipeline(serving, gate)
    routes = [
        *qianfan_routes.build_routes(settings, pipeline, serving, gate),
        *oauth_routes.build_routes(store.apps, store.tokens, secret_checks),
        *openai_routes.build_routes(settings, pipeline, gate),
        *v2_routes.build_routes(settings, pipeline, serving, gate),
        *bearer_routes.build_routes(gate, store.bearer_tokens),
        *console_routes.build_routes(settings, gate),
        *health.build_routes(registry, lambda: service.draining),
        *metrics_route.build_routes(metrics),
    ]
    placement = settings.admin_placement
    if placement != "off":

        def state() -> ServingState:
            return serving_state(settings, registry, lambda: service.draining)

        routes += admin_api.build_routes(
            admin_services(settings, store, ledger, state, secret_checks)
        )
    elif settings.admin.enabled:
        log.warning(
            "the admin API and console are off: the chat server listens on %s, not loopback; "
            "set admin.port to serve them on a port of their own",
            settings.host,
        )
    # Only with a port of its own: the admin surface is then kept off the chat port.
    middleware = (
        [Middleware(admin_api.AdminSocketOnly, admin_port=settings.admin.port)]
        if placement == "own"
        else []
    )

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=api_errors.HANDLERS,
    )
    service = Service(app, registry, settings.shutdown_grace_seconds)
    return service
