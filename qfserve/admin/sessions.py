"""Browser sessions of the admin console, and their CSRF tokens.

The cookie holds a random secret; the store keeps its SHA-256, so sessions outlive a restart and
every gateway process sharing the store accepts them. A session ends `idle_seconds` after its
last use or `max_seconds` after it began. Its last use is written at most once a minute
(`touch_seconds`): a console that polls does not write on every poll.

The CSRF token is derived from the session's secret (an HMAC), so it needs no storage: a page on
another site can make the browser send the cookie, but cannot read the token that goes with it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, select

from qfserve.access.secrets import token_digest
from qfserve.admin.credentials import Admin
from qfserve.admin.times import aware
from qfserve.store.database import Database
from qfserve.store.schema import AdminRow, AdminSessionRow


def csrf_token(session_secret: str) -> str:
    return hmac.new(session_secret.encode(), b"qfserve-admin-csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_secret: str, presented: str | None) -> bool:
    # As bytes: compare_digest refuses strings with characters beyond ASCII, which a header
    # can carry.
    return presented is not None and hmac.compare_digest(
        csrf_token(session_secret).encode(), presented.strip().encode("utf-8", "replace")
    )


@dataclass(frozen=True, slots=True)
class NewSession:
    secret: str  # the cookie's value: exists only here and in the browser
    admin: Admin

    @property
    def csrf_token(self) -> str:
        return csrf_token(self.secret)


class Sessions:
    """Blocking database calls: the server runs them in a worker thread."""

    def __init__(
        self,
        database: Database,
        *,
        idle_seconds: float,
        max_seconds: float,
        touch_seconds: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = database
        self._idle = timedelta(seconds=idle_seconds)
        self._max = timedelta(seconds=max_seconds)
        self._touch = timedelta(seconds=touch_seconds)
        self._clock = clock

    @property
    def idle_seconds(self) -> int:
        return int(self._idle.total_seconds())

    @property
    def max_seconds(self) -> int:
        return int(self._max.total_seconds())

    def open(self, admin: Admin) -> NewSession:
        """A new session; ended ones of anyone are deleted on the way."""
        secret = secrets.token_urlsafe(32)
        now = self._clock()
        with self._db.session() as session:
            session.execute(
                delete(AdminSessionRow).where(
                    or_(
                        AdminSessionRow.last_seen_at < now - self._idle,
                        AdminSessionRow.created_at < now - self._max,
                    )
                )
            )
            session.add(
                AdminSessionRow(
                    session_hash=token_digest(secret),
                    admin_id=admin.admin_id,
                    created_at=now,
                    last_seen_at=now,
                )
            )
        return NewSession(secret, admin)

    def resolve(self, secret: str, *, active: bool = True) -> Admin | None:
        """The admin of a live session, its idle clock restarted if the request is the admin's
        own doing (`active`; a page refreshing itself is not); None once it has ended."""
        if not secret:
            return None
        now = self._clock()
        with self._db.session() as session:
            found = session.execute(
                select(AdminSessionRow, AdminRow.name)
                .join(AdminRow, AdminRow.id == AdminSessionRow.admin_id)
                .where(AdminSessionRow.session_hash == token_digest(secret))
            ).first()
            if found is None:
                return None
            row, name = found[0], found[1]
            last_seen, created = aware(row.last_seen_at), aware(row.created_at)
            if now - last_seen >= self._idle or now - created >= self._max:
                session.delete(row)
                return None
            if active and now - last_seen >= self._touch:
                row.last_seen_at = now
            return Admin(row.admin_id, name)

    def close(self, secret: str) -> None:
        with self._db.session() as session:
            session.execute(
                delete(AdminSessionRow).where(AdminSessionRow.session_hash == token_digest(secret))
            )
