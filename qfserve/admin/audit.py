"""The admin audit log: who changed what, on what, when and from where. Never a secret."""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from qfserve.admin.times import aware
from qfserve.store.database import Database
from qfserve.store.schema import AdminAuditRow


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an admin of the API (and the address they came from), or the command line."""

    name: str
    address: str = ""


def command_line_actor() -> Actor:
    """The command line's user, as the audit log names them: `cli:<login>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in this container
        user = "?"
    return Actor(f"cli:{user}")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    created_at: datetime
    admin: str
    action: str
    target: str
    detail: dict[str, Any]
    address: str


@dataclass(frozen=True, slots=True)
class Page:
    """A page of rows, newest first, and the `before_id` of the next one (None: no more)."""

    rows: list[Any]
    next_before_id: int | None


class AuditLog:
    """Blocking database calls: the server runs them in a worker thread."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def record(
        self, actor: Actor, action: str, target: str = "", **detail: str | int | bool | None
    ) -> None:
        with self._db.session() as session:
            session.add(
                AdminAuditRow(
                    created_at=datetime.now(UTC),
                    admin=actor.name[:128],
                    action=action,
                    target=target[:128],
                    detail=json.dumps(detail, ensure_ascii=False, sort_keys=True),
                    address=actor.address[:64],
                )
            )

    def search(
        self,
        *,
        admin: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> Page:
        query = select(AdminAuditRow).order_by(AdminAuditRow.id.desc()).limit(limit + 1)
        if admin is not None:
            query = query.where(AdminAuditRow.admin == admin)
        if action is not None:
            query = query.where(AdminAuditRow.action == action)
        if since is not None:
            query = query.where(AdminAuditRow.created_at >= since)
        if until is not None:
            query = query.where(AdminAuditRow.created_at < until)
        if before_id is not None:
            query = query.where(AdminAuditRow.id < before_id)
        with self._db.session() as session:
            found = session.scalars(query).all()
            rows = [
                AuditEntry(
                    r.id,
                    aware(r.created_at),
                    r.admin,
                    r.action,
                    r.target,
                    json.loads(r.detail),
                    r.address,
                )
                for r in found[:limit]
            ]
        return Page(rows, rows[-1].id if len(found) > limit else None)
