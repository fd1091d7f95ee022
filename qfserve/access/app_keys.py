"""Long-lived app keys (`sk-qf-...`), the OpenAI clients' way in: `Authorization: Bearer <key>`.

Shown once when created; only a SHA-256 is stored (the key carries 192 random bits, so a slow
hash buys nothing and would cost every request).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, bindparam, select, update

from qfserve.access.apps import App, app_from_row
from qfserve.access.secrets import token_digest
from qfserve.errors import AppUnavailable, InvalidToken, MissingToken
from qfserve.store.database import Database
from qfserve.store.schema import AppKeyRow, AppRow

KEY_PREFIX = "sk-qf-"

_VERIFY = (
    select(AppKeyRow.revoked, *AppRow.__table__.columns)
    .join(AppRow, AppRow.id == AppKeyRow.app_id)
    .where(AppKeyRow.key_hash == bindparam("digest"))
)


@dataclass(frozen=True, slots=True)
class NewAppKey:
    key: str
    prefix: str
    app_id: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AppKeyInfo:
    """A key as listings show it: never the key."""

    prefix: str
    app_id: int
    created_at: datetime
    revoked: bool


def _found(row: Row[Any]) -> tuple[bool, App]:
    """Whether the key is revoked, and its app: what `Database.read_one` keeps between requests."""
    return row.revoked, app_from_row(row)


class AppKeys:
    """Blocking database calls: the server runs them in a worker thread."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def create(self, app_id: int) -> NewAppKey:
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        prefix = key[: len(KEY_PREFIX) + 6]
        created_at = datetime.now(UTC)
        with self._db.session() as session:
            session.add(
                AppKeyRow(
                    key_hash=token_digest(key),
                    prefix=prefix,
                    app_id=app_id,
                    created_at=created_at,
                    revoked=False,
                )
            )
        return NewAppKey(key, prefix, app_id, created_at)

    def for_app(self, app_id: int) -> list[AppKeyInfo]:
        """The app's keys by prefix, revoked ones too, oldest first."""
        with self._db.session() as session:
            rows = session.execute(
                select(AppKeyRow.prefix, AppKeyRow.created_at, AppKeyRow.revoked)
                .where(AppKeyRow.app_id == app_id)
                .order_by(AppKeyRow.created_at, AppKeyRow.prefix)
            ).all()
        return [AppKeyInfo(r.prefix, app_id, r.created_at, r.revoked) for r in rows]

    def revoke(self, prefix: str) -> int:
        with self._db.session() as session:
            result = session.execute(
                update(AppKeyRow)
                .where(AppKeyRow.prefix == prefix, AppKeyRow.revoked.is_(False))
                .values(revoked=True)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def verify(self, key: str | None) -> App:
        """The app the key belongs to; raises 100, 110 or 15 otherwise."""
        if not key:
            raise MissingToken()
        if not key.startswith(KEY_PREFIX):
            raise MissingToken("Invalid parameter: the key is malformed")
        found = self._db.read_one(_VERIFY, {"digest": token_digest(key)}, _found)
        if found is None or found[0]:
            raise InvalidToken()
        app = found[1]
        if app.deleted or app.disabled:
            raise AppUnavailable()
        return app
