"""The batch writer's own insert path against SQLAlchemy's: the same rows, on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.records import writes
from callbridge.records.database import upgrade
from callbridge.records.tables import CALL_CHILD_TABLES

from .conftest import Backend, full_call


async def _child_rows(backend: Backend, call_id: str) -> dict[str, list[tuple[Any, ...]]]:
    rows = {}
    async with backend.engine().connect() as conn:
        for table in CALL_CHILD_TABLES:
            query = select(table).where(table.c.call_id == call_id).order_by(table.c.seq)
            rows[table.name] = [row[1:] for row in (await conn.execute(query)).all()]
    return rows


async def _through_sqlalchemy(
    conn: AsyncConnection, table: Table, rows: list[tuple[Any, ...]]
) -> None:
    """The usual way: a dict a row, each value through its column's type by SQLAlchemy."""
    keys = [column.key for column in table.columns]
    await conn.execute(
        writes._insert(conn, table).on_conflict_do_nothing(),
        [dict(zip(keys, row, strict=True)) for row in rows],
    )


async def test_rows_inserted_as_tuples_read_back_as_sqlalchemys_own_inserts_do(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = backend.engine()
    await upgrade(engine)
    async with engine.begin() as conn:
        await writes.apply(conn, full_call("fast", "CA" + "1" * 32), store_transcripts=True)
    monkeypatch.setattr(writes, "_insert_rows", _through_sqlalchemy)
    async with engine.begin() as conn:
        await writes.apply(conn, full_call("usual", "CA" + "2" * 32), store_transcripts=True)

    fast, usual = await _child_rows(backend, "fast"), await _child_rows(backend, "usual")
    assert all(fast.values()), "every child table has rows of the call"
    assert fast == usual
    # Times come back as the same aware UTC datetimes, whichever path wrote them.
    (first_line, *_) = fast["callbridge_transcript_entries"]
    assert first_line[1].utcoffset() is not None
