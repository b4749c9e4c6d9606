"""DATABASE_URL as users write it, and the migrations against the tables the code uses."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.records import database, queries, tables
from callbridge.records.tables import metadata

from .conftest import Backend


@pytest.mark.parametrize(
    ("url", "driver_url", "connect_args"),
    [
        ("sqlite:///callbridge.db", "sqlite+aiosqlite:///callbridge.db", {}),
        ("sqlite:////var/lib/cb/calls.db", "sqlite+aiosqlite:////var/lib/cb/calls.db", {}),
        ("postgresql://u:p@db:5432/calls", "postgresql+asyncpg://u:***@db:5432/calls", {}),
        ("postgres://u@db/calls", "postgresql+asyncpg://u@db/calls", {}),
        ("postgresql+psycopg2://u@db/calls", "postgresql+asyncpg://u@db/calls", {}),
        (
            "postgresql://u@db/calls?sslmode=require",
            "postgresql+asyncpg://u@db/calls",
            {"ssl": "require"},
        ),
        (
            "postgresql://u@db/calls?options=-csearch_path%3Drecords%20-c%20statement_timeout%3D5s",
            "postgresql+asyncpg://u@db/calls",
            {"server_settings": {"search_path": "records", "statement_timeout": "5s"}},
        ),
    ],
)
def test_plain_urls_get_async_drivers(
    url: str, driver_url: str, connect_args: dict[str, object]
) -> None:
    got_url, got_args = database.async_url(url)
    assert got_url.render_as_string(hide_password=True) == driver_url
    assert got_args == connect_args


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@db/calls", "unsupported database 'mysql'"),
        ("not a url", "not a database URL"),
        ("sqlite://", "SQLite needs a file"),
        ("sqlite:///:memory:", "SQLite needs a file"),
        ("postgresql://u@db", "name the database"),
        ("postgresql://u@db/x?sslmode=sometimes", "sslmode must be one of"),
        ("postgresql://u@db/x?options=--foo", "options only supports -c"),
        ("postgresql+pg8000://u@db/x", "unsupported PostgreSQL driver"),
    ],
)
def test_unusable_urls_are_one_clear_value_error(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        database.async_url(url)
    assert str(error.value).startswith("DATABASE_URL: ")


def test_passwords_never_shown() -> None:
    assert "s3cret" not in database.redacted("postgresql://u:s3cret@db/calls")


async def test_migrations_build_exactly_the_tables_the_code_uses(backend: Backend) -> None:
    engine = backend.engine()
    assert await database.current_revision(engine) is None
    assert await database.upgrade(engine) == database.head_revision()
    assert await database.upgrade(engine) == database.head_revision()  # idempotent
    assert await database.current_revision(engine) == database.head_revision()

    def diff(conn: Connection) -> list[object]:
        context = MigrationContext.configure(
            conn, opts={"version_table": database.VERSION_TABLE, "compare_type": True}
        )
        return list(compare_metadata(context, metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


def _migrate(engine: AsyncEngine, how: str, revision: str) -> Awaitable[None]:
    def run(connection: Connection) -> None:
        config = database._alembic_config()
        config.attributes["connection"] = connection
        getattr(command, how)(config, revision)

    async def go() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(run)

    return go()


async def _rows(engine: AsyncEngine, sql: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(row) for row in (await conn.execute(text(sql))).all()]


async def test_0006_moves_the_verbs_into_the_actions_and_back(backend: Backend) -> None:
    engine = backend.engine()
    await _migrate(engine, "upgrade", "0005")

    def at(second: int) -> datetime.datetime:
        return datetime.datetime(2026, 12, 1, 10, 0, second, tzinfo=datetime.UTC)

    # As 0004 made it (the code no longer knows the table).
    call_verbs = Table(
        "callbridge_call_verbs",
        MetaData(),
        *(Column(name, String) for name in ("call_id", "verb", "by", "outcome", "detail")),
        Column("seq", Integer),
        Column("at", tables.UtcDateTime),
    )
    async with engine.begin() as conn:
        await conn.execute(
            tables.calls.insert(),
            [{"call_id": c, "started_at": at(0), "opened": True} for c in ("a", "b")],
        )
        await conn.execute(
            call_verbs.insert(),
            [
                {"call_id": "a", "seq": 3, "at": at(3), "verb": "keypad-entry",
                 "by": "caller", "outcome": "entered", "detail": "4 keys"},
                {"call_id": "a", "seq": 7, "at": at(7), "verb": "hang-up",
                 "by": "agent", "outcome": "after-goodbye", "detail": ""},
                {"call_id": "b", "seq": 2, "at": at(2), "verb": "say",
                 "by": "operator", "outcome": "refused", "detail": "the call is ending"},
            ],
        )  # fmt: skip
        await conn.execute(
            tables.call_actions.insert(),
            {
                "call_id": "a",
                "seq": 5,
                "at": at(5),
                "verb": "transfer",
                "outcome": "busy",
                "target": "sales",
                "started_at": at(4),
            },
        )

    await database.upgrade(engine)
    assert await database.current_revision(engine) == database.head_revision()
    async with engine.connect() as conn:
        assert not await conn.run_sync(
            lambda sync: inspect(sync).has_table("callbridge_call_verbs")
        )
    async with engine.connect() as conn:
        a, b = await queries.get_call(conn, "a"), await queries.get_call(conn, "b")
    assert a is not None and b is not None
    assert [
        (x.seq, x.at.second, x.verb, x.by, x.outcome, x.detail, x.target) for x in a.actions
    ] == [
        (3, 3, "keypad-entry", "caller", "entered", "4 keys", None),
        (5, 5, "transfer", None, "busy", "", "sales"),
        (7, 7, "hang-up", "agent", "after-goodbye", "", None),
    ]
    assert a.actions[1].started_at is not None and a.actions[1].started_at.second == 4
    assert [(x.seq, x.verb, x.by, x.outcome, x.detail) for x in b.actions] == [
        (2, "say", "operator", "refused", "the call is ending")
    ]

    await _migrate(engine, "downgrade", "0005")
    assert await _rows(
        engine, "SELECT call_id, seq, verb, by, outcome, detail FROM callbridge_call_verbs"
        " ORDER BY call_id, seq"
    ) == [
        ("a", 3, "keypad-entry", "caller", "entered", "4 keys"),
        ("a", 7, "hang-up", "agent", "after-goodbye", ""),
        ("b", 2, "say", "operator", "refused", "the call is ending"),
    ]  # fmt: skip
    assert await _rows(engine, "SELECT call_id, seq, verb FROM callbridge_call_actions") == [
        ("a", 5, "transfer")
    ]


def test_offline_sql_for_dbas() -> None:
    import io

    out = io.StringIO()
    database.upgrade_sql("postgresql://u:pw@db/calls", out)
    sql = out.getvalue()
    assert "CREATE TABLE callbridge_calls" in sql
    assert "CREATE TABLE callbridge_schema_version" in sql
    assert "pw" not in sql


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _mapped(folder: Path) -> list[str]:
    """Files under `folder` that this process has memory-mapped."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    return [line.split()[-1] for line in maps if str(folder) in line]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
async def test_sqlite_maps_none_of_its_files_into_memory(tmp_path: Path) -> None:
    # A mapped page of a file that can no longer be written is SIGBUS when written: the
    # server must only ever use read() and write() on the database.
    engine = database.create_engine(f"sqlite:///{tmp_path / 'calls.db'}")
    try:
        await database.upgrade(engine)
        async with engine.begin() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "delete"
            assert (await conn.exec_driver_sql("PRAGMA mmap_size")).scalar() == 0
            await conn.exec_driver_sql("INSERT INTO callbridge_schema_version VALUES ('x')")
            assert _mapped(tmp_path) == []
            await conn.rollback()
        assert _files(tmp_path) == ["calls.db"]  # no -wal, no -shm
    finally:
        await engine.dispose()


async def test_a_wal_database_is_turned_to_the_rollback_journal(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    made = sqlite3.connect(path)
    made.execute("PRAGMA journal_mode=WAL")
    made.execute("CREATE TABLE kept (x)")
    made.execute("INSERT INTO kept VALUES (1)")
    made.commit()
    engine = database.create_engine(f"sqlite:///{path}", sqlite_busy_seconds=0.1)
    try:
        # While another connection has it open in WAL, it is not used at all.
        with pytest.raises(OperationalError):
            async with engine.connect():
                pass
        made.close()
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT x FROM kept")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "delete"
        assert _files(tmp_path) == ["calls.db"]  # no -wal, no -shm
    finally:
        await engine.dispose()
