"""Which database errors are the database being away (wait and retry) and which are the
database refusing the data (set the entry aside), and how they are named in log lines."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.exc import (
    DatabaseError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from callbridge.records.errors import detail, error_name, transient


def wrapped(orig: BaseException, cls: type[DBAPIError] = DBAPIError, **kw: bool) -> DBAPIError:
    """`orig` as SQLAlchemy raises it."""
    return cls("INSERT ...", None, orig, **kw)  # type: ignore[arg-type]


def sqlite_error(sql: str, path: Path | None = None) -> sqlite3.Error:
    """A real error from SQLite, with its result code."""
    conn = sqlite3.connect(path or ":memory:")
    try:
        conn.executescript(sql)
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{sql!r} did not fail")


def pg_error(cls: type[Exception]) -> Exception:
    return cls("server said no")


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        PoolTimeoutError("QueuePool limit reached"),
        DisconnectionError("gone"),
        wrapped(Exception("could not connect"), OperationalError),
        wrapped(Exception("closed"), InterfaceError),
        wrapped(Exception("anything"), DBAPIError, connection_invalidated=True),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_connection_trouble_is_transient(exc: BaseException) -> None:
    assert transient(exc)


@pytest.mark.parametrize(
    ("cls", "is_transient"),
    [
        (asyncpg.exceptions.ConnectionFailureError, True),  # 08006
        (asyncpg.exceptions.TooManyConnectionsError, True),  # 53300
        (asyncpg.exceptions.AdminShutdownError, True),  # 57P01: a restart
        (asyncpg.exceptions.SerializationError, True),  # 40001
        (asyncpg.exceptions.DeadlockDetectedError, True),  # 40P01
        (asyncpg.exceptions.UniqueViolationError, False),  # 23505: the data
        (asyncpg.exceptions.NotNullViolationError, False),  # 23502
        (asyncpg.exceptions.InvalidTextRepresentationError, False),  # 22P02
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_postgresql_errors_by_sqlstate_class(cls: type[Exception], is_transient: bool) -> None:
    assert transient(wrapped(pg_error(cls))) is is_transient
    assert transient(wrapped(pg_error(cls), IntegrityError)) is is_transient


def test_a_psycopg_style_pgcode_counts_like_a_sqlstate() -> None:
    class PsycopgError(Exception):
        pgcode = "57P03"  # cannot connect now

    assert transient(wrapped(PsycopgError("starting up")))
    assert error_name(wrapped(PsycopgError("starting up"))) == "PsycopgError (57P03)"


def test_sqlite_refusing_the_data_is_not_transient() -> None:
    exc = sqlite_error("CREATE TABLE t (a UNIQUE); INSERT INTO t VALUES (1), (1)")
    assert isinstance(exc, sqlite3.IntegrityError) and exc.sqlite_errorcode == 2067
    assert not transient(wrapped(exc, IntegrityError))


def test_a_damaged_sqlite_file_is_transient_though_not_an_operational_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "records.db"
    path.write_bytes(b"this is not an SQLite database, it was overwritten" * 100)
    exc = sqlite_error("SELECT * FROM sqlite_master", path)
    assert exc.sqlite_errorcode == 26  # NOTADB
    error = wrapped(exc, DatabaseError)
    assert not isinstance(error, OperationalError)
    assert transient(error)


def test_other_exceptions_are_not_transient() -> None:
    assert not transient(ValueError("bad value"))
    assert not transient(wrapped(Exception("no code at all")))


def test_error_names_carry_the_driver_class_and_sqlstate_never_the_message() -> None:
    unique = wrapped(pg_error(asyncpg.exceptions.UniqueViolationError), IntegrityError)
    assert error_name(unique) == "UniqueViolationError (23505)"
    assert error_name(ConnectionRefusedError(111, "refused")) == "ConnectionRefusedError"
    sqlite = wrapped(sqlite_error("SELECT * FROM missing"), OperationalError)
    assert error_name(sqlite) == "OperationalError"  # sqlite3's, not SQLAlchemy's wrapper


def test_detail_only_for_the_database_being_away() -> None:
    away = wrapped(Exception("connection refused\nis the server running?"), OperationalError)
    assert detail(away) == "connection refused"
    assert detail(wrapped(Exception("x" * 500), OperationalError)) == "x" * 200
    assert detail(TimeoutError()) == "TimeoutError"
    # A refusal of data can quote the data: never in a log line.
    refused = wrapped(Exception("duplicate key (phone)=(+15551230000)"), IntegrityError)
    assert detail(refused) == ""
