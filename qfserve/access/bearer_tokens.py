"""Bearer tokens: V2 credentials minted for an app's IAM keys by `GET /v1/BCE-BEARER/token`,
valid for the lifetime asked (within bounds), then refused as `invalid_iam_token`.

They have the API keys' shape and table (`v2_keys.py`, which also verifies them), with an expiry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete

from qfserve.access.secrets import token_digest
from qfserve.access.v2_keys import new_credential
from qfserve.store.database import Database
from qfserve.store.schema import V2KeyRow

MIN_LIFETIME_SECONDS = 1
MAX_LIFETIME_SECONDS = 30 * 86400
DEFAULT_LIFETIME_SECONDS = 86400
# Expired tokens are deleted this long after their expiry, when a new token is minted: until
# then a late request is told its token expired rather than that it is unknown.
_KEEP_EXPIRED_SECONDS = 86400


def clamp_lifetime(seconds: int) -> int:
    return max(MIN_LIFETIME_SECONDS, min(MAX_LIFETIME_SECONDS, seconds))


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    app_id: int
    created_at: int  # unix seconds
    expires_at: int  # unix seconds


class BearerTokens:
    """Blocking database calls: the server runs them in a worker thread."""

    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = database
        self._clock = clock

    def mint(self, app_id: int, lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS) -> MintedToken:
        """A new token for the app, valid for `lifetime_seconds` brought within bounds."""
        now = int(self._clock())
        expires_at = now + clamp_lifetime(lifetime_seconds)
        made = new_credential()
        with self._db.session() as session:
            session.execute(
                delete(V2KeyRow).where(V2KeyRow.expires_at < now - _KEEP_EXPIRED_SECONDS)
            )
            session.add(
                V2KeyRow(
                    key_hash=token_digest(made.credential),
                    key_id=made.key_id,
                    app_id=app_id,
                    created_at=datetime.fromtimestamp(now, UTC),
                    expires_at=expires_at,
                    revoked=False,
                )
            )
        return MintedToken(made.credential, app_id, now, expires_at)
