"""What a database error means for the records: the database being away (wait and retry)
or the database refusing the data (set the entry aside), and how to name it in a log line."""

from __future__ import annotations

from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# SQLSTATE classes worth waiting out: connection (08), resources (53), operator intervention
# such as a restart (57), and serialization failures/deadlocks (40).
TRANSIENT_SQLSTATE = ("08", "53", "57", "40")
# SQLite's primary result codes for the database file or its disk failing, not the data:
# BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB. Most
# come as OperationalError; a damaged or overwritten file (CORRUPT, NOTADB) comes as a
# plain DatabaseError and would otherwise be taken for entries the database refuses.
SQLITE_DATABASE_FAULTS = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


def transient(exc: BaseException) -> bool:
    """Is this the database being away (wait and retry), rather than refusing the data?"""
    if isinstance(
        exc,
        OSError | TimeoutError | PoolTimeoutError | DisconnectionError | OperationalError,
    ):
        return True
    if isinstance(exc, InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in SQLITE_DATABASE_FAULTS
        state = sqlstate(exc)
        return state is not None and state.startswith(TRANSIENT_SQLSTATE)
    return False


def sqlstate(exc: DBAPIError) -> str | None:
    """The driver's SQLSTATE (PostgreSQL), if it gave one."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def error_name(exc: BaseException) -> str:
    """The driver's exception class, with its SQLSTATE: never the message (it may quote data)."""
    orig = getattr(exc, "orig", None)
    name = type(orig).__name__ if orig is not None else type(exc).__name__
    state = sqlstate(exc) if isinstance(exc, DBAPIError) else None
    return f"{name} ({state})" if state else name


def detail(exc: BaseException) -> str:
    """The first line of the message, for the database being away only ("" otherwise)."""
    # Its messages say why ("connection refused"). A refusal of data can quote the data,
    # so it is logged by class and SQLSTATE only.
    if not transient(exc):
        return ""
    orig = getattr(exc, "orig", None) or exc
    return str(orig).splitlines()[0][:200] if str(orig) else type(orig).__name__
