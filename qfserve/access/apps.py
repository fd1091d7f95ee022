"""Apps: the API Key / Secret Key pairs that clients exchange for access tokens, and what each
app may do (enabled, endpoints, quota overrides)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from qfserve.access.attempts import FailedAttempts
from qfserve.access.secrets import DUMMY_SECRET_HASH, hash_secret, random_key, verify_secret
from qfserve.errors import OAuthError
from qfserve.store.database import Database
from qfserve.store.schema import AppRow, TokenRow

QUOTA_FIELDS = ("qps", "rpm", "tpm", "daily", "total")


@dataclass(frozen=True, slots=True)
class App:
    app_id: int
    name: str
    api_key: str
    created_at: datetime
    disabled: bool
    deleted: bool
    quota: dict[str, int | None]
    endpoints: frozenset[str] | None  # None: every endpoint

    def may_use(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints


@dataclass(frozen=True, slots=True)
class NewApp:
    """A freshly created app. `secret_key` exists only here: it is stored as a hash."""

    app: App
    secret_key: str


def app_from_row(row: AppRow | Row[Any]) -> App:
    """From the ORM row, or from a plain row holding the apps table's columns."""
    endpoints = (
        frozenset(e for e in row.endpoints.split(",") if e) if row.endpoints is not None else None
    )
    return App(
        app_id=row.id,
        name=row.name,
        api_key=row.api_key,
        created_at=row.created_at,
        disabled=row.disabled,
        deleted=row.deleted_at is not None,
        quota={name: getattr(row, name) for name in QUOTA_FIELDS},
        endpoints=endpoints,
    )


class AppNotFound(LookupError):
    pass


class AppRegistry:
    """Blocking database calls: the server runs them in a worker thread (`authenticate` in one of
    the few `SecretCheckThreads`).

    `attempts` limits failed authentications (None: no limit); `verify` checks a secret against
    its stored hash.
    """

    def __init__(
        self,
        database: Database,
        *,
        attempts: FailedAttempts | None = None,
        verify: Callable[[str, str], bool] = verify_secret,
    ) -> None:
        self._db = database
        self._attempts = attempts
        self._verify = verify

    def create(self, name: str) -> NewApp:
        secret_key = random_key(32)
        row = AppRow(
            name=name,
            api_key=random_key(24),
            secret_hash=hash_secret(secret_key),
            created_at=datetime.now(UTC),
            disabled=False,
        )
        with self._db.session() as session:
            session.add(row)
            session.flush()
            return NewApp(app_from_row(row), secret_key)

    def all(self, *, include_deleted: bool = False) -> list[App]:
        query = select(AppRow).order_by(AppRow.id)
        if not include_deleted:
            query = query.where(AppRow.deleted_at.is_(None))
        with self._db.session() as session:
            return [app_from_row(row) for row in session.scalars(query)]

    def get(self, app_id: int) -> App:
        with self._db.session() as session:
            return app_from_row(self._live_row(session, app_id))

    def delete(self, app_id: int) -> None:
        with self._db.session() as session:
            self._live_row(session, app_id).deleted_at = datetime.now(UTC)

    def set_disabled(self, app_id: int, disabled: bool) -> None:
        with self._db.session() as session:
            self._live_row(session, app_id).disabled = disabled

    def set_access(
        self,
        app_id: int,
        quota: Mapping[str, int | None],
        endpoints: list[str] | None,
    ) -> App:
        """Set the given quota overrides (a value of 0 or less clears one) and, if given, the
        endpoints the app may use (an empty list: all)."""
        with self._db.session() as session:
            row = self._live_row(session, app_id)
            for name, value in quota.items():
                if name not in QUOTA_FIELDS:
                    raise ValueError(f"unknown quota {name}")
                setattr(row, name, value if value is not None and value > 0 else None)
            if endpoints is not None:
                row.endpoints = ",".join(sorted(set(endpoints))) if endpoints else None
            session.flush()
            return app_from_row(row)

    def revoke_tokens(self, app_id: int) -> int:
        """Revoke every access token of the app; returns how many were live."""
        with self._db.session() as session:
            self._live_row(session, app_id)
            result = session.execute(
                update(TokenRow)
                .where(TokenRow.app_id == app_id, TokenRow.revoked.is_(False))
                .values(revoked=True)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def rotate_secret(self, app_id: int) -> str:
        """A new Secret Key (returned once); the old one stops working at once."""
        secret_key = random_key(32)
        with self._db.session() as session:
            self._live_row(session, app_id).secret_hash = hash_secret(secret_key)
        return secret_key

    def check_attempts(self, api_key: str, address: str) -> None:
        """Raises the OAuth error of a client id or address out of failed attempts (no I/O: the
        token route asks before it queues a secret check, and `authenticate` again)."""
        if self._attempts is not None:
            self._attempts.check(api_key, address)

    def authenticate(self, api_key: str, secret_key: str, address: str = "") -> App:
        """The app whose keys these are, or the OAuth error the token route answers with.

        An unknown client id costs one secret check as a wrong secret does (against a dummy hash),
        and both count as a failed attempt of the client id and of the address.
        """
        self.check_attempts(api_key, address)
        with self._db.session() as session:
            row = session.scalar(select(AppRow).where(AppRow.api_key == api_key))
            app = app_from_row(row) if row is not None and row.deleted_at is None else None
            stored = row.secret_hash if app is not None and row is not None else ""
        matches = self._verify(secret_key, stored or DUMMY_SECRET_HASH)
        if app is None or not stored or not matches:
            if self._attempts is not None:
                self._attempts.failed(api_key, address)
            if app is None or not stored:
                raise OAuthError(401, "invalid_client", "unknown client id")
            raise OAuthError(401, "invalid_client", "Client authentication failed")
        if app.disabled:
            raise OAuthError(401, "invalid_client", "app is disabled")
        return app

    @staticmethod
    def _live_row(session: Session, app_id: int) -> AppRow:
        row = session.get(AppRow, app_id)
        if row is None or row.deleted_at is not None:
            raise AppNotFound(f"no app {app_id}")
        return row
