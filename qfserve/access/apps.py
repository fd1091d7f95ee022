"""Apps: the API Key / Secret Key pairs that clients exchange for access tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from qfserve.access.secrets import hash_secret, random_key, verify_secret
from qfserve.errors import OAuthError
from qfserve.store.database import Database
from qfserve.store.schema import AppRow


@dataclass(frozen=True, slots=True)
class App:
    app_id: int
    name: str
    api_key: str
    created_at: datetime
    disabled: bool


@dataclass(frozen=True, slots=True)
class NewApp:
    """A freshly created app. `secret_key` exists only here: it is stored as a hash."""

    app: App
    secret_key: str


def _app(row: AppRow) -> App:
    return App(row.id, row.name, row.api_key, row.created_at, row.disabled)


class AppRegistry:
    """Blocking database calls: the server runs them in a worker thread."""

    def __init__(self, database: Database) -> None:
        self._db = database

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
            return NewApp(_app(row), secret_key)

    def list(self) -> list[App]:
        with self._db.session() as session:
            return [_app(row) for row in session.scalars(select(AppRow).order_by(AppRow.id))]

    def get(self, app_id: int) -> App | None:
        with self._db.session() as session:
            row = session.get(AppRow, app_id)
            return _app(row) if row else None

    def delete(self, app_id: int) -> bool:
        with self._db.session() as session:
            row = session.get(AppRow, app_id)
            if row is None:
                return False
            session.delete(row)
            return True

    def authenticate(self, api_key: str, secret_key: str) -> App:
        """The app whose keys these are, or the OAuth error the token route answers with."""
        with self._db.session() as session:
            row = session.scalar(select(AppRow).where(AppRow.api_key == api_key))
            app = _app(row) if row else None
            stored = row.secret_hash if row else None
        if app is None or stored is None:
            raise OAuthError(401, "invalid_client", "unknown client id")
        if not verify_secret(secret_key, stored):
            raise OAuthError(401, "invalid_client", "Client authentication failed")
        return app
