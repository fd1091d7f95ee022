"""IAM Access Keys for the `bce-auth-v1` signature.

An HMAC signature can only be checked with the Secret Key itself, so it cannot be kept as a slow
hash the way app Secret Keys are. Nor is it stored: it is derived, `HMAC(master key, AK:nonce)`,
from a master key that lives outside the database (a file in the data directory, or a setting
shared by every gateway process). A copy of the database alone signs nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, select

from qfserve.access.apps import App, app_from_row
from qfserve.access.secrets import random_key
from qfserve.errors import AppUnavailable, SignatureInvalid
from qfserve.store.database import Database
from qfserve.store.schema import AppRow, IamKeyRow

log = logging.getLogger(__name__)


_MASTER_KEY = re.compile(r"[0-9a-fA-F]{64}")
_HOW_TO_MAKE_ONE = (
    "a master key is 64 hex digits (256 random bits); make one with "
    "`python -c 'import secrets; print(secrets.token_hex(32))'` or `openssl rand -hex 32`"
)


class InvalidMasterKey(ValueError):
    """The configured master key is not one a random generator made (a placeholder, say)."""


def load_master_key(explicit: str, key_file: Path) -> bytes:
    """The master key: the setting if given, else the file, created (mode 600) on first use.

    Either must hold 64 hex digits, as the file this function creates always has: anything else
    (a placeholder copied from an example, a passphrase) would be a guessable key."""
    if explicit:
        return _checked(explicit.strip(), "the `master_key` setting")
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
        log.info("created a new master key in %s", key_file)
    return _checked(key_file.read_text().strip(), f"the master key file {key_file}")


def _checked(key: str, source: str) -> bytes:
    if not _MASTER_KEY.fullmatch(key):
        raise InvalidMasterKey(f"{source} is not a usable master key: {_HOW_TO_MAKE_ONE}")
    # The hex text itself is the HMAC key, as it always has been: keys derived before stay valid.
    return key.encode()


@dataclass(frozen=True, slots=True)
class IamKey:
    access_key: str
    secret_key: str
    app_id: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class IamKeyInfo:
    """An Access Key as listings show it: its Secret Key is never shown again."""

    access_key: str
    app_id: int
    created_at: datetime


class IamKeys:
    """Blocking database calls: the server runs them in a worker thread."""

    def __init__(self, database: Database, master_key: bytes) -> None:
        self._db = database
        self._master = master_key

    def _derive(self, access_key: str, nonce: str) -> str:
        message = f"{access_key}:{nonce}".encode()
        return hmac.new(self._master, message, hashlib.sha256).hexdigest()[:32]

    def create(self, app_id: int) -> IamKey:
        access_key, nonce = random_key(32), secrets.token_hex(16)
        created_at = datetime.now(UTC)
        with self._db.session() as session:
            session.add(
                IamKeyRow(access_key=access_key, app_id=app_id, nonce=nonce, created_at=created_at)
            )
        return IamKey(access_key, self._derive(access_key, nonce), app_id, created_at)

    def for_app(self, app_id: int) -> list[IamKeyInfo]:
        """The app's Access Keys, oldest first."""
        with self._db.session() as session:
            rows = session.execute(
                select(IamKeyRow.access_key, IamKeyRow.created_at)
                .where(IamKeyRow.app_id == app_id)
                .order_by(IamKeyRow.created_at, IamKeyRow.access_key)
            ).all()
        return [IamKeyInfo(r.access_key, app_id, r.created_at) for r in rows]

    def revoke(self, access_key: str) -> int:
        """Delete the Access Key: its signatures are refused (14) from the next request on."""
        with self._db.session() as session:
            result = session.execute(delete(IamKeyRow).where(IamKeyRow.access_key == access_key))
            return int(getattr(result, "rowcount", 0) or 0)

    def resolve(self, access_key: str) -> tuple[App, str]:
        """The app and the Secret Key behind an Access Key; raises 14 or 15."""
        with self._db.session() as session:
            found = session.execute(
                select(IamKeyRow, AppRow)
                .join(AppRow, AppRow.id == IamKeyRow.app_id)
                .where(IamKeyRow.access_key == access_key)
            ).first()
            if found is None:
                raise SignatureInvalid()
            key, app = found[0], app_from_row(found[1])
            secret = self._derive(key.access_key, key.nonce)
        if app.deleted or app.disabled:
            raise AppUnavailable()
        return app, secret
