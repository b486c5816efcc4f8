"""Engine creation and schema migration (Alembic, applied automatically at start)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from orgsyncd.errors import ConfigError, OrgsyncError

log = structlog.get_logger("orgsyncd.db")
_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_SQLITE_BUSY_S = 120  # a big import holds the write lock for tens of seconds
_PG_MIGRATION_LOCK = 0x0F95C


def normalize_url(url: str) -> str:
    """Accept the plain ``postgresql://`` spelling operators copy from elsewhere."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"database_url {url!r} is not a valid database URL") from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)
    raise ConfigError(f"database_url {url!r}: only sqlite and postgresql are supported")


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": _SQLITE_BUSY_S, "check_same_thread": False},
        poolclass=NullPool,
    )
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself, so we can ask for IMMEDIATE.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "foreign_keys=OFF",
        "cache_size=-16384",  # 16 MiB; an import raises its own (import_cache)
        "temp_store=FILE",
        f"busy_timeout={_SQLITE_BUSY_S * 1000}",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def import_cache(conn: Connection) -> None:
    """A big import inserts into large indexes: give its connection a bigger SQLite page cache
    (bounded, so peak memory stays flat however big the file is)."""
    if is_sqlite(conn):
        conn.exec_driver_sql("PRAGMA cache_size=-65536")
        conn.commit()


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def write_transaction(engine: Engine, *, busy_ms: int | None = None) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock up front (BEGIN IMMEDIATE)
    so it never fails half-way on a lock upgrade. *busy_ms*: on SQLite, wait at most this long
    for the lock (instead of the engine's long default) before failing with OperationalError."""
    conn = engine.connect().execution_options(sqlite_immediate=True)
    try:
        if busy_ms is not None and is_sqlite(conn):
            # On the raw connection: through SQLAlchemy it would begin (and wait) first. SQLite
            # connections are not pooled (NullPool), so the setting ends with this one.
            conn.connection.driver_connection.execute(f"PRAGMA busy_timeout={int(busy_ms)}")  # type: ignore[union-attr]
        with conn.begin():
            yield conn
    finally:
        conn.close()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision. Safe when several instances start at once."""
    try:
        with engine.connect() as conn:
            if not is_sqlite(conn):
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
            try:
                _upgrade(conn)
            finally:
                if not is_sqlite(conn):
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                    conn.commit()
    except OperationalError as exc:
        raise OrgsyncError(f"cannot open the database: {_first_line(exc)}") from None


def _upgrade(conn: Connection) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    before = MigrationContext.configure(conn).get_current_revision()
    command.upgrade(cfg, "head")
    conn.commit()
    after = MigrationContext.configure(conn).get_current_revision()
    if after != before:  # alembic's own lines are held at warning; this is the one that matters
        log.info("database_migrated", revision_before=before, revision=after)


def _first_line(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
