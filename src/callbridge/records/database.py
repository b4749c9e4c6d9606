"""Where call records live: DATABASE_URL to an async engine, and the schema's migrations.

Operators write plain URLs (`sqlite:///callbridge.db`, `postgresql://user@host/db`); the
async drivers (aiosqlite, asyncpg) are chosen here. libpq-style `sslmode` and
`options=-c name=value` are translated for asyncpg, which does not understand them.
"""

from __future__ import annotations

import shlex
import sqlite3
from pathlib import Path
from typing import Any, TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, event, make_url, text
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SUPPORTED = "sqlite:///path/to/file.db or postgresql://user:password@host:5432/database"
VERSION_TABLE = "callbridge_schema_version"
_MIGRATIONS = "callbridge.records:migrations"
# Held while migrating, so that instances starting together do not race on the schema.
_PG_MIGRATION_LOCK = 0x63616C6C  # "call"
# The rollback journal, not WAL: see _sqlite_pragmas.
_SQLITE_JOURNAL_MODE = "delete"
_PG_SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}


def async_url(url: str) -> tuple[URL, dict[str, Any]]:
    """DATABASE_URL as the async driver's URL plus connect arguments; ValueError if unusable."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"DATABASE_URL: not a database URL; expected {SUPPORTED}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        if driver not in ("", "aiosqlite", "pysqlite"):
            raise ValueError(f"DATABASE_URL: unsupported SQLite driver {driver!r}; use sqlite:///")
        if (
            not parsed.database
            or parsed.database == ":memory:"
            or parsed.database.startswith("file:")
        ):
            raise ValueError("DATABASE_URL: SQLite needs a file, e.g. sqlite:///callbridge.db")
        return parsed.set(drivername="sqlite+aiosqlite"), {}
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg", "psycopg", "psycopg2"):
            raise ValueError(
                f"DATABASE_URL: unsupported PostgreSQL driver {driver!r}; use postgresql://"
            )
        if not parsed.database:
            raise ValueError("DATABASE_URL: name the database, e.g. postgresql://host/callbridge")
        query = dict(parsed.query)
        connect_args: dict[str, Any] = {}
        sslmode = query.pop("sslmode", None)
        if sslmode is not None:
            if not isinstance(sslmode, str) or sslmode not in _PG_SSLMODES:
                raise ValueError(f"DATABASE_URL: sslmode must be one of {sorted(_PG_SSLMODES)}")
            connect_args["ssl"] = sslmode
        options = query.pop("options", None)
        if options is not None:
            if not isinstance(options, str):
                raise ValueError("DATABASE_URL: give options once")
            connect_args["server_settings"] = _server_settings(options)
        return parsed.set(drivername="postgresql+asyncpg", query=query), connect_args
    raise ValueError(f"DATABASE_URL: unsupported database {backend!r}; expected {SUPPORTED}")


def _server_settings(options: str) -> dict[str, str]:
    """libpq's `options` ("-c search_path=x -c application_name=y") as asyncpg settings."""
    settings: dict[str, str] = {}
    words = shlex.split(options)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            word, i = words[i + 1], i + 1
        elif word.startswith("-c"):
            word = word[2:]
        else:
            raise ValueError("DATABASE_URL: options only supports -c name=value settings")
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise ValueError("DATABASE_URL: options only supports -c name=value settings")
        settings[name.replace("-", "_")] = value
        i += 1
    return settings


def redacted(url: str) -> str:
    """The URL with any password hidden, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite DATABASE_URL, None for other databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def create_engine(url: str, *, sqlite_busy_seconds: float = 5.0) -> AsyncEngine:
    """An async engine for DATABASE_URL (ValueError for an unsupported URL)."""
    driver_url, connect_args = async_url(url)
    if driver_url.get_backend_name() == "sqlite":
        engine = create_async_engine(
            driver_url, connect_args={"timeout": sqlite_busy_seconds, **connect_args}
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args.setdefault("timeout", 10.0)  # connecting; a down server must fail, not hang
    return create_async_engine(
        driver_url,
        connect_args=connect_args,
        pool_pre_ping=True,  # connections killed while idle are replaced, not used
        pool_size=5,
        max_overflow=5,
        pool_timeout=10.0,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # No file of the database is memory-mapped: a write to a mapped page of a file that
        # can no longer be written (disk turned read-only, immutable, full) is SIGBUS, which
        # would end the process and every live call with it. WAL maps its index (`-shm`),
        # so the rollback journal is used; through read() and write(), the same faults are
        # errors (SQLITE_IOERR, SQLITE_READONLY, SQLITE_FULL) that the store waits out like
        # an outage. Readers such as `callbridge calls` still read while the server runs:
        # a commit locks them out only while it writes, and they wait for that.
        cursor.execute("PRAGMA mmap_size=0")
        cursor.execute(f"PRAGMA journal_mode={_SQLITE_JOURNAL_MODE}")
        mode = cursor.fetchone()
        if not mode or str(mode[0]).lower() != _SQLITE_JOURNAL_MODE:
            # A WAL database (made by an earlier version) is converted by the first
            # connection that has it alone; until then, no connection is used.
            raise sqlite3.OperationalError(
                f"cannot set journal_mode={_SQLITE_JOURNAL_MODE} (now {mode[0] if mode else None})"
            )
        # 512 KiB of page cache per connection, not SQLite's 2 MB: the server appends, the
        # operating system caches the file anyway, and 2 MB was 20 KB of every call's share
        # of memory at 100 calls (README, Performance).
        cursor.execute("PRAGMA cache_size=-512")
    finally:
        cursor.close()


def _alembic_config(sql_out: TextIO | None = None) -> Config:
    config = Config(output_buffer=sql_out) if sql_out is not None else Config()
    config.set_main_option("script_location", _MIGRATIONS)
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "the records migrations have no head"
    return head


async def upgrade(engine: AsyncEngine) -> str:
    """Bring the schema to the newest revision (idempotent); returns that revision."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            await conn.execute(lock, {"key": _PG_MIGRATION_LOCK})
        await conn.run_sync(_upgrade)
    return head_revision()


def _upgrade(connection: Connection) -> None:
    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def upgrade_sql(url: str, out: TextIO) -> None:
    """Write the SQL that `upgrade` would run on an empty database (for DBAs), offline."""
    driver_url, _ = async_url(url)
    config = _alembic_config(sql_out=out)
    config.set_main_option(
        "sqlalchemy.url", driver_url.render_as_string(hide_password=True).replace("%", "%%")
    )
    command.upgrade(config, "head", sql=True)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision)


def _current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()
