"""Fixtures for the call records: both real backends, a way to take each one away and bring
it back, and stores wired to them.

PostgreSQL is the server at 127.0.0.1:5432, database `test` (user `postgres`, else `root`);
each test gets its own schema, dropped afterwards. Without that server the PostgreSQL variants
are skipped, unless CALLBRIDGE_REQUIRE_SERVICES=1 (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.records import database
from callbridge.records.entries import (
    AgentSessionStarted,
    CallAction,
    CallClosed,
    CallError,
    CallOpened,
    CallSetupDone,
    CallStatusChanged,
    RecordEntry,
    SessionConfigured,
    ToolInvocation,
    TranscriptLine,
    TurnLatency,
)
from callbridge.records.store import CallStore, StoreLimits
from tests.helpers.log_events import Events, caught

PG_HOST, PG_PORT, PG_DATABASE = "127.0.0.1", 5432, "test"
INSTANCE = "test-box"
FAST = StoreLimits(
    retry_initial=0.02, retry_max=0.2, startup_timeout=10.0, write_timeout=3.0, read_timeout=5.0
)


def _find_pg_user() -> tuple[str | None, str]:
    async def probe(user: str) -> None:
        conn = await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user=user, database=PG_DATABASE, timeout=3
        )
        await conn.close()

    reasons = []
    for user in ("postgres", "root"):
        try:
            # In a thread of its own: the caller may be inside a running event loop.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, probe(user)).result()
        except Exception as exc:
            reasons.append(f"{user}: {type(exc).__name__}: {exc}")
        else:
            return user, ""
    return None, "; ".join(reasons)


@pytest.fixture(scope="session")
def pg_user() -> str:
    user, why = _find_pg_user()
    if user is None:
        message = f"PostgreSQL at {PG_HOST}:{PG_PORT}/{PG_DATABASE} is not reachable ({why})"
        if os.environ.get("CALLBRIDGE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{message}; CALLBRIDGE_REQUIRE_SERVICES=1 requires it")
        pytest.skip(f"{message}; the PostgreSQL variants are skipped")
    return user


class TcpProxy:
    """A TCP relay in front of PostgreSQL that a test can cut, stall and restore."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and break every open one, as a crashed server would."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        self._writers.clear()

    def stall(self) -> None:
        """Keep connections open but stop passing bytes: a database that hangs."""
        self._flowing.clear()

    def unstall(self) -> None:
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()
            self._writers.discard(dst)


@dataclass
class Backend:
    """One database, as the code under test reaches it (`url`) and as the test checks it."""

    name: str
    url: str  # what stores, the CLI and subprocesses are given
    direct_url: str  # the database itself, never cut
    tmp_path: Path
    proxy: TcpProxy | None = None
    _lock: sqlite3.Connection | None = None
    engines: list[AsyncEngine] = field(default_factory=list)

    def engine(self) -> AsyncEngine:
        engine = database.create_engine(self.direct_url)
        self.engines.append(engine)
        return engine

    async def cut(self) -> None:
        """Make the database refuse the code under test until `restore()`."""
        if self.proxy is not None:
            await self.proxy.stop()
            return
        path = database.sqlite_path(self.direct_url)
        assert path is not None
        self._lock = sqlite3.connect(path, timeout=5, isolation_level=None)
        # Another writer's transaction: readers go on, writers get SQLITE_BUSY.
        self._lock.execute("BEGIN IMMEDIATE")

    async def restore(self) -> None:
        if self.proxy is not None:
            await self.proxy.start()
            return
        assert self._lock is not None
        self._lock.execute("ROLLBACK")
        self._lock.close()
        self._lock = None

    async def count(self, table: str, where: str = "", **params: Any) -> int:
        async with self.engine().connect() as conn:
            sql = f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")
            return int((await conn.execute(text(sql), params)).scalar_one())

    async def dump(self) -> str:
        """Every row of every records table, as text (to look for words)."""
        tables = [
            "callbridge_calls",
            "callbridge_call_statuses",
            "callbridge_agent_sessions",
            "callbridge_transcript_entries",
            "callbridge_tool_calls",
            "callbridge_turn_latencies",
            "callbridge_call_errors",
        ]
        parts = []
        async with self.engine().connect() as conn:
            for table in tables:
                parts.append(repr((await conn.execute(text(f"SELECT * FROM {table}"))).all()))
        return "\n".join(parts)


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'records.db'}"
        made = Backend("sqlite", url, url, tmp_path)
        yield made
        if made._lock is not None:
            made._lock.close()
        for engine in made.engines:
            await engine.dispose()
        return

    user = request.getfixturevalue("pg_user")
    schema = f"cbtest_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=user, database=PG_DATABASE)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    proxy = TcpProxy(PG_HOST, PG_PORT)
    await proxy.start()
    options = f"options=-csearch_path%3D{schema}%20-capplication_name%3D{schema}"
    made = Backend(
        "postgresql",
        url=f"postgresql://{user}@127.0.0.1:{proxy.port}/{PG_DATABASE}?{options}",
        direct_url=f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}?{options}",
        tmp_path=tmp_path,
        proxy=proxy,
    )
    try:
        yield made
    finally:
        for engine in made.engines:
            await engine.dispose()
        await proxy.stop()
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            schema,
        )
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
def events() -> Iterator[Events]:
    with caught("callbridge.records") as handler:
        yield handler


StoreFactory = Callable[..., CallStore]


@pytest.fixture
async def make_store(backend: Backend, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    stores: list[CallStore] = []

    def make(**overrides: Any) -> CallStore:
        url = overrides.pop("url", backend.url)
        options: dict[str, Any] = {
            "spool_path": tmp_path / "spool.jsonl",
            "instance_id": INSTANCE,
            "limits": FAST,
            **overrides,
        }
        store = CallStore(database.create_engine(url, sqlite_busy_seconds=0.2), **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close(timeout=2.0)


# -- a synthetic call ----------------------------------------------------------------------

T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def full_call(call_id: str = "call-1", call_sid: str = "CA" + "1" * 32) -> list[RecordEntry]:
    """One call with every kind of entry, as the bridge would submit it."""
    return [
        CallStatusChanged(call_sid, "ringing", T0 - 2, sequence=1),
        CallSetupDone(
            call_id,
            T0 - 1,
            "outbound",
            "configured",
            bot_name="shop",
            parameters={"name": "Alice", "ticket": "42"},
            call_sid=call_sid,
            from_number="+15551230000",
            to_number="+15557650000",
        ),
        CallOpened(
            call_id,
            0,
            T0,
            "outbound",
            call_sid=call_sid,
            stream_sid="MZ" + "2" * 32,
            from_number="+15551230000",
            to_number="+15557650000",
        ),
        CallStatusChanged(call_sid, "in-progress", T0 - 0.5, sequence=2, call_id=call_id),
        AgentSessionStarted(call_id, 1, T0 + 0.2, "sess-a"),
        TranscriptLine(
            call_id, 2, T0 + 0.5, "agent", "Hi, this is the bike shop.", "r1", False, 2.5, 2.5
        ),
        TranscriptLine(call_id, 3, T0 + 4.0, "caller", "Is my bike ready?"),
        ToolInvocation(
            call_id,
            4,
            T0 + 4.6,
            "tool-1",
            "repair_status",
            {"ticket": 42},
            '{"ready":true}',
            duration_ms=85.5,
        ),
        TurnLatency(call_id, 5, T0 + 4.9, "r2", 640.0, 710.0, 1520.0, 1590.0),
        TranscriptLine(
            call_id,
            6,
            T0 + 5.0,
            "agent",
            "Yes, it is ready for pick-up today",
            "r2",
            True,
            3.2,
            1.25,
        ),
        ToolInvocation(
            call_id, 7, T0 + 5.5, "tool-2", "book_slot", {"day": "sat"}, None, discarded=True
        ),
        AgentSessionStarted(call_id, 8, T0 + 6.0, "sess-b", resumed=True),
        CallError(call_id, 9, T0 + 6.1, "agent", "connection_lost", "resumed within 30 s"),
        TranscriptLine(call_id, 10, T0 + 7.0, "caller", "Great, thanks, bye."),
        CallAction(call_id, 11, T0 + 7.2, "keypad-entry", "entered", by="caller", detail="4 keys"),
        CallAction(call_id, 12, T0 + 7.5, "transfer", "busy", "a person", T0 + 6.5, by="agent"),
        SessionConfigured(
            call_id,
            13,
            T0 + 7.6,
            {
                "system_prompt": "You call Alice about her bike.",
                "greeting": "Hi Alice, this is the bike shop.",
                "input": {"keyterms": ["Brompton"], "transcription_prompt": "A bike shop."},
                "output": {"voice": "alba", "volume": 80},
                "tools": [{"type": "function", "name": "repair_status"}],
            },
        ),
        CallAction(call_id, 14, T0 + 7.7, "hang-up", "after-goodbye", by="agent"),
        CallClosed(
            call_id,
            15,
            T0 + 8.0,
            "caller",
            "caller hung up",
            400,
            390,
            350,
            {"before_ready": 10, "after_clear": 3},
            resumes=1,
        ),
        CallStatusChanged(call_sid, "completed", T0 + 8.5, sequence=3, duration_seconds=9),
    ]


def iso(at: float) -> str:
    """An entry's time as the API writes it."""
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return str(msgspec.json.decode(msgspec.json.encode(moment)))
