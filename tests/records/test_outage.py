"""The database slow, down or gone: calls never wait, entries wait in the spool, and every one
of them arrives, once, when the database is back."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import event

from callbridge.records import database
from callbridge.records.entries import CallClosed, CallOpened, RecordEntry, TranscriptLine
from callbridge.records.store import CallStore

from .conftest import (
    FAST,
    INSTANCE,
    PG_DATABASE,
    PG_HOST,
    PG_PORT,
    T0,
    Backend,
    Events,
    StoreFactory,
)


def a_call(call_id: str, lines: int) -> list[RecordEntry]:
    entries: list[RecordEntry] = [CallOpened(call_id, 0, T0, "inbound")]
    entries += [
        TranscriptLine(call_id, seq, T0 + seq, "caller", f"line {seq}")
        for seq in range(1, lines + 1)
    ]
    return entries


def spool_lines(tmp_path: Path) -> int:
    path = tmp_path / "spool.jsonl"
    return len(path.read_bytes().splitlines()) if path.exists() else 0


async def test_database_down_mid_call_then_back(
    make_store: StoreFactory, backend: Backend, tmp_path: Path, events: Events
) -> None:
    store = make_store()
    await store.start()
    for entry in a_call("c", 3):
        store.submit(entry)
    await store.flush()

    await backend.cut()
    more = [TranscriptLine("c", seq, T0 + seq, "caller", f"line {seq}") for seq in range(4, 2004)]
    async with asyncio.timeout(5):  # a failure detector, not a wait: none of this may block
        for entry in more:
            store.submit(entry)
        store.submit(CallClosed("c", 2004, T0 + 2004, "caller", "caller hung up"))
        await store.wait_durable()
    assert spool_lines(tmp_path) == 2001, "everything submitted is in the spool"
    await events.wait_for("records.db_unavailable")
    await events.wait_for("records.db_retry_failed", times=3)  # retried, logged once
    assert not store.stats().database_up
    assert await backend.count("callbridge_transcript_entries") == 3

    await backend.restore()
    async with asyncio.timeout(20):
        await store.flush()
    assert await backend.count("callbridge_transcript_entries") == 2003
    assert await backend.count("callbridge_calls", "ended_by = 'caller'") == 1
    assert spool_lines(tmp_path) == 0, "a committed spool is emptied"
    assert store.stats().database_up
    # Logged once per outage, not per entry or per retry.
    assert events.names.count("records.db_unavailable") == 1
    assert events.names.count("records.db_recovered") == 1


async def test_entries_beyond_the_memory_bound_are_read_back_from_the_spool(
    make_store: StoreFactory, backend: Backend, tmp_path: Path
) -> None:
    # No gathering window: many small spool batches, some of them only in the file.
    store = make_store(limits=dataclasses.replace(FAST, max_in_memory=5, spool_window=0))
    await store.start()
    await backend.cut()
    for entry in a_call("big", 300):
        store.submit(entry)
        await asyncio.sleep(0)  # many small spool batches, as calls would make them
    await store.wait_durable()
    assert spool_lines(tmp_path) == 301
    await backend.restore()
    async with asyncio.timeout(20):
        await store.flush()
    assert await backend.count("callbridge_transcript_entries") == 300


async def test_database_unreachable_at_start_does_not_hold_up_calls(
    backend: Backend, tmp_path: Path, events: Events
) -> None:
    # SQLite in a folder that does not exist yet; PostgreSQL on a port nobody listens on.
    if backend.name == "sqlite":
        folder = tmp_path / "not-yet"
        url = f"sqlite:///{folder / 'records.db'}"
    else:
        assert backend.proxy is not None
        await backend.proxy.stop()
        url = backend.url
    limits = dataclasses.replace(FAST, startup_timeout=0.3)
    store = CallStore(
        database.create_engine(url),
        tmp_path / "spool.jsonl",
        instance_id=INSTANCE,
        limits=limits,
    )
    try:
        async with asyncio.timeout(5):
            await store.start()  # gives up waiting, does not fail
            for entry in a_call("early", 5):
                store.submit(entry)
            await store.wait_durable()
        assert spool_lines(tmp_path) == 6
        assert "records.start_deferred" in events.names
        if backend.name == "sqlite":
            folder.mkdir()
        else:
            assert backend.proxy is not None
            await backend.proxy.start()
        async with asyncio.timeout(20):
            await store.flush()
        detail = await store.get_call("early")
        assert detail is not None and len(detail.transcript) == 5
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_connections_killed_by_the_server(
    make_store: StoreFactory, backend: Backend, pg_user: str
) -> None:
    store = make_store(url=backend.direct_url)
    await store.start()
    entries = a_call("killed", 40)
    for entry in entries[:20]:
        store.submit(entry)
    await store.flush()
    schema = backend.direct_url.rsplit("application_name%3D", 1)[1]
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=pg_user, database=PG_DATABASE)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            schema,
        )
    finally:
        await admin.close()
    assert killed >= 1
    for entry in entries[20:]:
        store.submit(entry)
    async with asyncio.timeout(20):
        await store.flush()
    assert await backend.count("callbridge_transcript_entries") == 40


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # SQLite: the lock tests
async def test_a_hanging_database_delays_nothing(
    make_store: StoreFactory, backend: Backend, tmp_path: Path, events: Events
) -> None:
    assert backend.proxy is not None
    store = make_store(limits=dataclasses.replace(FAST, write_timeout=0.5))
    await store.start()
    store.submit(CallOpened("hang", 0, T0, "inbound"))
    await store.flush()
    backend.proxy.stall()
    async with asyncio.timeout(3):
        for entry in a_call("hang", 50)[1:]:
            store.submit(entry)
        await store.wait_durable()
    assert spool_lines(tmp_path) == 50
    await events.wait_for("records.db_unavailable")  # the write timed out
    backend.proxy.unstall()
    async with asyncio.timeout(20):
        await store.flush()
    assert await backend.count("callbridge_transcript_entries") == 50


async def test_a_spool_that_cannot_be_written_is_neither_durable_nor_unbounded(
    make_store: StoreFactory, backend: Backend, events: Events
) -> None:
    store = make_store(limits=dataclasses.replace(FAST, max_queue=120))
    await store.start()
    await backend.cut()
    spool = store._spool  # the disk under it fills up, is freed, fills up again
    write = spool.append

    def disk_full(data: bytes) -> tuple[int, int]:
        raise OSError(28, "No space left on device")

    spool.append = disk_full  # type: ignore[method-assign]
    for entry in a_call("full", 99):
        store.submit(entry)
    await events.wait_for("records.spool_failed")
    # Kept in memory for the database, but not durable: a crash now would lose them.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.wait_durable(), 0.3)

    spool.append = write  # type: ignore[method-assign]
    store.submit(CallOpened("after", 0, T0, "inbound"))
    await events.wait_for("records.spool_recovered")
    # The spool works again, and took the new entry; the 100 it never took are still
    # only in memory, so still not durable.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(store.wait_durable(), 0.3)

    spool.append = disk_full  # type: ignore[method-assign]
    for seq in range(100, 130):
        store.submit(TranscriptLine("full", seq, T0 + seq, "caller", f"line {seq}"))
    await events.wait_for("records.spool_failed", times=2)
    # 130 entries held in memory, past max_queue: new ones are refused, not held.
    for seq in range(130, 140):
        store.submit(TranscriptLine("full", seq, T0 + seq, "caller", f"line {seq}"))
    await events.wait_for("records.entries_dropped")
    assert store.stats().dropped == 10

    spool.append = write  # type: ignore[method-assign]
    await backend.restore()
    async with asyncio.timeout(20):
        await store.wait_durable()
        await store.flush()
    assert await backend.count("callbridge_calls") == 2
    assert await backend.count("callbridge_transcript_entries") == 99 + 30


SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
_NO_LIMIT = 1_073_741_823  # SQLite's default max_page_count


@SQLITE_ONLY
async def test_a_full_disk_is_waited_out_like_an_outage(
    make_store: StoreFactory, backend: Backend, tmp_path: Path, events: Events
) -> None:
    store = make_store()
    max_pages = [_NO_LIMIT]

    def cap(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # The file may grow no further: SQLite's own SQLITE_FULL, as on a full disk.
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA max_page_count={max_pages[0]}")
        cursor.close()

    event.listen(store.engine.sync_engine, "checkout", cap)
    await store.start()
    for entry in a_call("c", 3):
        store.submit(entry)
    await store.flush()
    async with backend.engine().connect() as conn:
        max_pages[0] = int((await conn.exec_driver_sql("PRAGMA page_count")).scalar_one())

    for seq in range(4, 204):
        store.submit(TranscriptLine("c", seq, T0 + seq, "caller", f"line {seq} " + "x" * 500))
    await store.wait_durable()
    await events.wait_for("records.db_unavailable")
    await events.wait_for("records.db_retry_failed", times=FAST.poison_strikes + 2)
    [unavailable] = events.fields_of("records.db_unavailable")
    assert unavailable["detail"] == "database or disk is full"
    assert store.stats().rejected == 0 and not store.stats().database_up
    assert spool_lines(tmp_path) == 200

    max_pages[0] = _NO_LIMIT
    async with asyncio.timeout(20):
        await store.flush()
    assert await backend.count("callbridge_transcript_entries") == 203
    assert store.stats().rejected == 0


@SQLITE_ONLY
async def test_a_database_file_overwritten_by_garbage_is_waited_out_like_an_outage(
    make_store: StoreFactory, backend: Backend, tmp_path: Path, events: Events
) -> None:
    store = make_store()
    await store.start()
    for entry in a_call("c", 3):
        store.submit(entry)
    await store.flush()
    path = database.sqlite_path(backend.url)
    assert path is not None
    kept = path.read_bytes()
    path.write_bytes(b"not a database " * 1000)  # in place: SQLITE_NOTADB / SQLITE_CORRUPT

    for seq in range(4, 14):
        store.submit(TranscriptLine("c", seq, T0 + seq, "caller", f"line {seq}"))
    await store.wait_durable()
    # Not the entries' fault: never counted against them, however long it lasts.
    await events.wait_for("records.db_retry_failed", times=FAST.poison_strikes + 2)
    assert store.stats().rejected == 0
    assert not (tmp_path / "spool.jsonl.rejected").exists()
    [unavailable] = events.fields_of("records.db_unavailable")
    assert unavailable["error"] == "DatabaseError"

    path.write_bytes(kept)
    async with asyncio.timeout(20):
        await store.flush()
    assert await backend.count("callbridge_transcript_entries") == 13
