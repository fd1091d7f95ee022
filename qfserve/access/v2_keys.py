"""V2 credentials, shaped as Qianfan's: `bce-v3/ALTAK-<20 letters or digits>/<40 hex digits>`,
presented as `Authorization: Bearer <credential>`.

Two kinds share the shape and the table: API keys, created by an operator, which live until
revoked; and bearer tokens, minted for an app's IAM keys (`bearer_tokens.py`), which also expire.
The public part, `ALTAK-...`, names the credential in listings and revocations; only a SHA-256
of the whole credential is stored (the secret carries 160 random bits, so a slow hash buys
nothing and would cost every request).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, bindparam, select, update

from qfserve.access.apps import App, app_from_row
from qfserve.access.secrets import random_key, token_digest
from qfserve.errors import AppUnavailable, ExpiredIamToken, InvalidIamToken
from qfserve.store.database import Database
from qfserve.store.schema import AppRow, V2KeyRow

SCHEME = "bce-v3/"
ID_PREFIX = "ALTAK-"
_ID_LENGTH, _SECRET_BYTES = 20, 20
_SHAPE = re.compile(r"^bce-v3/ALTAK-[A-Za-z0-9]{20}/[0-9a-f]{40}$")

# Every request's check: one query, credential and app together, built once.
_VERIFY = (
    select(V2KeyRow.revoked, V2KeyRow.expires_at, *AppRow.__table__.columns)
    .join(AppRow, AppRow.id == V2KeyRow.app_id)
    .where(V2KeyRow.key_hash == bindparam("digest"))
)


@dataclass(frozen=True, slots=True)
class NewCredential:
    """A credential just made: `secret` exists only here."""

    key_id: str
    secret: str

    @property
    def prefix(self) -> str:
        """What listings show: everything but the secret."""
        return SCHEME + self.key_id

    @property
    def credential(self) -> str:
        return f"{self.prefix}/{self.secret}"


def new_credential() -> NewCredential:
    return NewCredential(ID_PREFIX + random_key(_ID_LENGTH), secrets.token_hex(_SECRET_BYTES))


def key_id_of(prefix_or_id: str) -> str:
    """`bce-v3/ALTAK-x`, `ALTAK-x` or `x` (a whole credential too): the key id `ALTAK-x`."""
    text = prefix_or_id.strip()
    if text.startswith(SCHEME):
        text = text[len(SCHEME) :]
    text = text.split("/", 1)[0]
    return text if text.startswith(ID_PREFIX) else ID_PREFIX + text


@dataclass(frozen=True, slots=True)
class NewV2Key:
    api_key: str
    prefix: str
    app_id: int


@dataclass(frozen=True, slots=True)
class V2KeyInfo:
    """An API key as listings show it: never its secret."""

    prefix: str
    app_id: int
    created_at: datetime
    revoked: bool


@dataclass(frozen=True, slots=True)
class _Found:
    """A credential's row as the check needs it, kept between requests by `Database.read_one`."""

    revoked: bool
    expires_at: int | None
    app: App

    @classmethod
    def from_row(cls, row: Row[Any]) -> _Found:
        return cls(row.revoked, row.expires_at, app_from_row(row))


class V2Keys:
    """Blocking database calls: the server runs them in a worker thread."""

    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = database
        self._clock = clock

    def create(self, app_id: int) -> NewV2Key:
        made = new_credential()
        with self._db.session() as session:
            session.add(
                V2KeyRow(
                    key_hash=token_digest(made.credential),
                    key_id=made.key_id,
                    app_id=app_id,
                    created_at=datetime.now(UTC),
                    expires_at=None,
                    revoked=False,
                )
            )
        return NewV2Key(made.credential, made.prefix, app_id)

    def for_app(self, app_id: int) -> list[V2KeyInfo]:
        """The app's API keys, revoked ones too, oldest first (bearer tokens are not listed)."""
        with self._db.session() as session:
            rows = session.execute(
                select(V2KeyRow.key_id, V2KeyRow.created_at, V2KeyRow.revoked)
                .where(V2KeyRow.app_id == app_id, V2KeyRow.expires_at.is_(None))
                .order_by(V2KeyRow.created_at, V2KeyRow.key_id)
            ).all()
        return [V2KeyInfo(SCHEME + r.key_id, app_id, r.created_at, r.revoked) for r in rows]

    def revoke(self, prefix_or_id: str) -> int:
        """Revoke the live API key or bearer token so named; how many were (0 or 1)."""
        with self._db.session() as session:
            result = session.execute(
                update(V2KeyRow)
                .where(V2KeyRow.key_id == key_id_of(prefix_or_id), V2KeyRow.revoked.is_(False))
                .values(revoked=True)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def verify(self, credential: str | None) -> App:
        """The app an API key or bearer token belongs to; raises 110, 111 or 15 otherwise."""
        if not credential or not _SHAPE.match(credential):
            raise InvalidIamToken()
        found = self._db.read_one(_VERIFY, {"digest": token_digest(credential)}, _Found.from_row)
        if found is None or found.revoked:
            raise InvalidIamToken()
        if found.expires_at is not None and found.expires_at <= self._clock():
            raise ExpiredIamToken()
        if found.app.deleted or found.app.disabled:
            raise AppUnavailable()
        return found.app
