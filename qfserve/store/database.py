"""Connecting to the store and bringing its schema up to date with alembic."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Executable, Row, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

MIGRATIONS = Path(__file__).parent / "migrations"

T = TypeVar("T")


# The advisory lock that serialises migrations on PostgreSQL: any fixed 64-bit number, the same
# in every qfserve version ("qfserve" in ASCII).
_MIGRATION_LOCK = 0x7166736572766500

# Rows kept by `read_one` at most: bounded, whatever the number of tokens presented.
_HOT_READS = 4096


class Database:
    """One SQLAlchemy engine and its session factory. Thread-safe; used from worker threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        on_file = False
        if url.startswith("sqlite"):
            database = url.split("///", 1)[-1]
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                on_file = True
        # A pre-ping finds server connections the network dropped; a SQLite file has none, and
        # the ping would be a second query on every request's token check.
        self.engine: Engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._hot_reads: OrderedDict[tuple[Any, ...], object] = OrderedDict()
        self._hot_lock = threading.Lock()
        self._seen_version: int | None = None
        self._change_watch: Any = None  # a SQLite file's own connection for data_version
        self._unwatched: Engine | None = None  # writes on that same connection (`own_writes`)
        if on_file:
            self._change_watch = self.engine.raw_connection()
            watched = self._change_watch.dbapi_connection
            self._unwatched = create_engine(url, poolclass=StaticPool, creator=lambda: watched)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def upgrade(self, revision: str = "head") -> None:
        """Create or migrate the schema in place to the newest revision.

        Gateways starting together against one database take turns, so the later ones find the
        schema at the revision and do nothing: on PostgreSQL each holds an advisory lock for
        its migration's transaction; on SQLite the migration's transaction begins by taking the
        file's write lock (pysqlite would otherwise run the DDL outside any transaction)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Released with the transaction, also if the process dies half-way.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                )
            elif connection.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def read_one(
        self, statement: Executable, parameters: dict[str, Any], convert: Callable[[Row[Any]], T]
    ) -> T | None:
        """The first row of one read, converted: the request path's lookups (tokens, app keys).

        On a SQLite file, what was found is kept, converted, until any connection, in any
        process, commits to the database: SQLite's `PRAGMA data_version` on a connection of our
        own says so in a few microseconds, where the read through SQLAlchemy took 0.3 ms per
        request in the server. A token revoked by the CLI is therefore refused from the next
        request on, as before. `convert` must depend on nothing but the row."""
        if self._change_watch is None:
            row = self._read_one(statement, parameters)
            return None if row is None else convert(row)
        key = (id(statement), convert, tuple(sorted(parameters.items())))
        with self._hot_lock:
            version = self._change_watch.execute("PRAGMA data_version").fetchone()[0]
            if version != self._seen_version:
                self._hot_reads.clear()
                self._seen_version = version
            kept = self._hot_reads.get(key)
            if kept is not None:
                self._hot_reads.move_to_end(key)
                return cast(T, kept)
        # Read after the version: a commit in between changes it, and the next call starts over.
        row = self._read_one(statement, parameters)
        if row is None:
            return None
        found = convert(row)
        with self._hot_lock:
            if self._seen_version == version:
                self._hot_reads[key] = found
                if len(self._hot_reads) > _HOT_READS:
                    self._hot_reads.popitem(last=False)
        return found

    @contextmanager
    def own_writes(self) -> Iterator[Connection]:
        """A transaction whose commit does not make `read_one` forget what it keeps: for rows no
        kept read depends on (the usage ledger's, committed on every request). On a SQLite file
        it runs on the change watch's own connection, whose commits `PRAGMA data_version` does
        not count (it counts other connections'); reads wait while it runs. Elsewhere it is an
        ordinary transaction."""
        if self._unwatched is None:
            with self.engine.begin() as connection:
                yield connection
            return
        with self._hot_lock, self._unwatched.begin() as connection:
            yield connection

    def _read_one(self, statement: Executable, parameters: dict[str, Any]) -> Row[Any] | None:
        # A plain connection: an ORM session's bookkeeping would cost more than the query.
        with self.engine.connect() as connection:
            return connection.execute(statement, parameters).first()

    def close(self) -> None:
        # Not disposed: its one connection is the change watch's, closed below.
        self._unwatched = None
        if self._change_watch is not None:
            self._change_watch.close()
            self._change_watch = None
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the CLI write while the server reads; foreign keys make deletes cascade.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode, NORMAL writes each commit to the log before it returns and syncs the disk at
    # checkpoints: a killed process loses no committed row (the usage ledger's promise to a
    # client that received its answer), a power cut may lose the last commits. FULL's fsync per
    # commit made a lone request wait about 3.5 ms for its ledger row.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
