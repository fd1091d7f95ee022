"""Admins and their bearer tokens.

An admin's password is random (24 letters and digits), shown once and kept as a salted scrypt
hash, the app Secret Keys' scheme. A bearer token (`qfa-` and 256 random bits) is kept as its
SHA-256 only: a slow hash buys nothing for so many random bits and would cost every request.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from qfserve.access.secrets import (
    DUMMY_SECRET_HASH,
    hash_secret,
    random_key,
    token_digest,
    verify_secret,
)
from qfserve.admin.times import aware
from qfserve.store.database import Database
from qfserve.store.schema import AdminRow, AdminSessionRow, AdminTokenRow

TOKEN_PREFIX = "qfa-"  # noqa: S105  (a public marker, not a secret)
_PREFIX_LENGTH = len(TOKEN_PREFIX) + 8
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class AdminNotFound(LookupError):
    pass


class AdminExists(ValueError):
    pass


class InvalidAdminName(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Admin:
    admin_id: int
    name: str


@dataclass(frozen=True, slots=True)
class AdminTokenInfo:
    """A token as listings show it: never the token."""

    prefix: str
    created_at: datetime
    revoked: bool


@dataclass(frozen=True, slots=True)
class AdminInfo:
    name: str
    created_at: datetime
    tokens: list[AdminTokenInfo]


@dataclass(frozen=True, slots=True)
class NewAdminToken:
    name: str
    token: str  # exists only here
    prefix: str


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidAdminName(
            "an admin name is 1 to 64 letters, digits and the characters _ . @ -"
        )
    return name


class Admins:
    """Blocking database calls: the server runs them in a worker thread (password checks on
    the few `SecretCheckThreads`)."""

    def __init__(
        self, database: Database, *, verify: Callable[[str, str], bool] = verify_secret
    ) -> None:
        self._db = database
        self._verify = verify

    def create(self, name: str, *, reset: bool = False) -> str:
        """A new admin's password (shown once). With `reset`, an existing admin gets a new
        password and its sessions end; without, an existing name raises AdminExists."""
        check_name(name)
        password = random_key(24)
        hashed = hash_secret(password)
        with self._db.session() as session:
            row = session.scalar(select(AdminRow).where(AdminRow.name == name))
            if row is not None and not reset:
                raise AdminExists(f"admin {name} exists (--reset gives it a new password)")
            if row is None:
                session.add(AdminRow(name=name, password_hash=hashed, created_at=datetime.now(UTC)))
            else:
                row.password_hash = hashed
                session.execute(delete(AdminSessionRow).where(AdminSessionRow.admin_id == row.id))
        return password

    def exists(self, name: str) -> bool:
        with self._db.session() as session:
            return session.scalar(select(AdminRow.id).where(AdminRow.name == name)) is not None

    def delete(self, name: str) -> None:
        """The admin, its sessions and its tokens are gone at once."""
        with self._db.session() as session:
            row = _row(session, name)
            session.execute(delete(AdminSessionRow).where(AdminSessionRow.admin_id == row.id))
            session.execute(delete(AdminTokenRow).where(AdminTokenRow.admin_id == row.id))
            session.delete(row)

    def all(self) -> list[AdminInfo]:
        with self._db.session() as session:
            admins = session.scalars(select(AdminRow).order_by(AdminRow.name)).all()
            tokens = session.scalars(
                select(AdminTokenRow).order_by(AdminTokenRow.created_at, AdminTokenRow.prefix)
            ).all()
            return [
                AdminInfo(
                    a.name,
                    aware(a.created_at),
                    [_token_info(t) for t in tokens if t.admin_id == a.id],
                )
                for a in admins
            ]

    def authenticate(self, name: str, password: str) -> Admin | None:
        """The admin, if the password is theirs. An unknown name costs one scrypt check too."""
        with self._db.session() as session:
            row = session.scalar(select(AdminRow).where(AdminRow.name == name))
            found = (Admin(row.id, row.name), row.password_hash) if row is not None else None
        matches = self._verify(password, found[1] if found else DUMMY_SECRET_HASH)
        return found[0] if found is not None and matches else None

    def create_token(self, name: str) -> NewAdminToken:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        prefix = token[:_PREFIX_LENGTH]
        with self._db.session() as session:
            row = _row(session, name)
            session.add(
                AdminTokenRow(
                    token_hash=token_digest(token),
                    prefix=prefix,
                    admin_id=row.id,
                    created_at=datetime.now(UTC),
                    revoked=False,
                )
            )
        return NewAdminToken(name, token, prefix)

    def tokens(self, name: str) -> list[AdminTokenInfo]:
        with self._db.session() as session:
            row = _row(session, name)
            found = session.scalars(
                select(AdminTokenRow)
                .where(AdminTokenRow.admin_id == row.id)
                .order_by(AdminTokenRow.created_at, AdminTokenRow.prefix)
            ).all()
            return [_token_info(t) for t in found]

    def revoke_token(self, prefix: str) -> int:
        """Revoke the live tokens with this prefix; how many were."""
        with self._db.session() as session:
            result = session.execute(
                update(AdminTokenRow)
                .where(AdminTokenRow.prefix == prefix, AdminTokenRow.revoked.is_(False))
                .values(revoked=True)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def verify_token(self, token: str) -> Admin | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self._db.session() as session:
            found = session.execute(
                select(AdminRow.id, AdminRow.name)
                .join(AdminTokenRow, AdminTokenRow.admin_id == AdminRow.id)
                .where(
                    AdminTokenRow.token_hash == token_digest(token),
                    AdminTokenRow.revoked.is_(False),
                )
            ).first()
        return Admin(found.id, found.name) if found is not None else None


def _row(session: Session, name: str) -> AdminRow:
    row = session.scalar(select(AdminRow).where(AdminRow.name == name))
    if row is None:
        raise AdminNotFound(f"no admin {name}")
    return row


def _token_info(row: AdminTokenRow) -> AdminTokenInfo:
    return AdminTokenInfo(row.prefix, aware(row.created_at), row.revoked)
