"""Times read back from the store: SQLite hands back naive datetimes (the UTC they were written
in), PostgreSQL aware ones."""

from __future__ import annotations

from datetime import UTC, datetime


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
