"""Everything the admin API works with, built once per server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from qfserve.access.app_keys import AppKeys
from qfserve.access.apps import AppRegistry
from qfserve.access.attempts import FailedAttempts, Rate
from qfserve.access.bearer_tokens import BearerTokens
from qfserve.access.iam_keys import IamKeys
from qfserve.access.secrets import SecretCheckThreads
from qfserve.access.usage import UsageLedger
from qfserve.access.v2_keys import V2Keys
from qfserve.admin.audit import AuditLog
from qfserve.admin.credentials import Admins
from qfserve.admin.endpoints import ServingState
from qfserve.admin.operations import Operations
from qfserve.admin.request_log import RequestLog
from qfserve.admin.sessions import Sessions
from qfserve.admin.stats import Dashboard
from qfserve.config import Settings
from qfserve.store.database import Database


@dataclass(frozen=True, slots=True)
class AdminServices:
    settings: Settings
    operations: Operations
    admins: Admins
    sessions: Sessions
    audit: AuditLog
    login_attempts: FailedAttempts
    ledger: UsageLedger
    request_log: RequestLog
    dashboard: Dashboard
    serving_state: Callable[[], ServingState]
    secret_checks: SecretCheckThreads


class StoreParts(Protocol):
    """What of the store (`qfserve.server.Store`) the admin API uses."""

    @property
    def database(self) -> Database: ...

    @property
    def apps(self) -> AppRegistry: ...

    @property
    def app_keys(self) -> AppKeys: ...

    @property
    def v2_keys(self) -> V2Keys: ...

    @property
    def iam_keys(self) -> IamKeys: ...

    @property
    def bearer_tokens(self) -> BearerTokens: ...


def operations_on(store: StoreParts, audit: AuditLog) -> Operations:
    return Operations(
        store.apps, store.app_keys, store.v2_keys, store.iam_keys, store.bearer_tokens, audit
    )


def admin_services(
    settings: Settings,
    store: StoreParts,
    ledger: UsageLedger,
    serving_state: Callable[[], ServingState],
    secret_checks: SecretCheckThreads,
) -> AdminServices:
    admin = settings.admin
    audit = AuditLog(store.database)
    window = admin.login_failure_window_seconds
    return AdminServices(
        settings=settings,
        operations=operations_on(store, audit),
        admins=Admins(store.database),
        sessions=Sessions(
            store.database,
            idle_seconds=admin.session_idle_seconds,
            max_seconds=admin.session_max_seconds,
        ),
        audit=audit,
        login_attempts=FailedAttempts(
            per_client_id=Rate(admin.max_login_failures_per_name, window),
            per_address=Rate(admin.max_login_failures_per_address, window),
        ),
        ledger=ledger,
        request_log=RequestLog(store.database),
        dashboard=Dashboard(store.database),
        serving_state=serving_state,
        secret_checks=secret_checks,
    )
