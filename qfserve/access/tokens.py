"""Access tokens: issued for an app's keys, presented as `?access_token=` on every call.

Shape, as Qianfan's: `24.<32 hex>.<ttl>.<expiry unix>.<n>-<app id>`. The 32 hex digits are 128
random bits; the rest is informative. Only a SHA-256 of the whole token is stored, so a leaked
database gives no usable token. Many tokens of one app are valid at once.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, bindparam, select

from qfserve.access.apps import App, app_from_row
from qfserve.access.secrets import token_digest
from qfserve.errors import AppUnavailable, ExpiredToken, InvalidToken, MissingToken
from qfserve.store.database import Database
from qfserve.store.schema import AppRow, TokenRow

_TOKEN_SHAPE = re.compile(r"^24\.[0-9a-f]{32}\.\d+\.\d+\.\d+-\d+$")

# Every request's check: one query, token and app together, built once.
_VERIFY = (
    select(TokenRow.revoked, TokenRow.expires_at, *AppRow.__table__.columns)
    .join(AppRow, AppRow.id == TokenRow.app_id)
    .where(TokenRow.token_hash == bindparam("digest"))
)


@dataclass(frozen=True, slots=True)
class _Found:
    """A token's row as the check needs it, kept between requests by `Database.read_one`."""

    revoked: bool
    expires_at: int
    app: App

    @classmethod
    def from_row(cls, row: Row[Any]) -> _Found:
        return cls(row.revoked, row.expires_at, app_from_row(row))


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    refresh_token: str
    expires_in: int
    session_key: str
    session_secret: str


class TokenIssuer:
    """Blocking database calls: the server runs them in a worker thread. `clock` gives the Unix
    time in seconds, for issuing and for expiry alike."""

    def __init__(
        self, database: Database, ttl_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = database
        self._ttl = ttl_seconds
        self._clock = clock

    def issue(self, app_id: int) -> IssuedToken:
        now = self._clock()
        expires_at = int(now) + self._ttl
        serial = secrets.randbelow(10**6)
        token = f"24.{secrets.token_hex(16)}.{self._ttl}.{expires_at}.{serial}-{app_id}"
        with self._db.session() as session:
            session.add(
                TokenRow(
                    token_hash=token_digest(token),
                    app_id=app_id,
                    created_at=datetime.fromtimestamp(now, UTC),
                    expires_at=expires_at,
                    revoked=False,
                )
            )
        # The refresh token is never accepted back: clients simply fetch a new access token.
        refresh = f"25.{secrets.token_hex(16)}.{self._ttl * 10}.{expires_at}.{app_id}"
        return IssuedToken(
            access_token=token,
            refresh_token=refresh,
            expires_in=self._ttl,
            session_key=secrets.token_hex(16),
            session_secret=secrets.token_hex(16),
        )

    def verify(self, token: str | None) -> App:
        """The app the token belongs to; raises 100, 110, 111 or 15 otherwise."""
        if not token:
            raise MissingToken()
        if not _TOKEN_SHAPE.match(token):
            raise MissingToken("Invalid parameter: access_token is malformed")
        found = self._db.read_one(_VERIFY, {"digest": token_digest(token)}, _Found.from_row)
        if found is None or found.revoked:
            raise InvalidToken()
        if found.expires_at <= self._clock():
            raise ExpiredToken()
        if found.app.deleted or found.app.disabled:
            raise AppUnavailable()
        return found.app
