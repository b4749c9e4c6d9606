"""The batch writer's own insert path against SQLAlchemy's: the same rows, on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

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


async def test_rows_inserted_as_tuples_read_back_as_sqlalchemys_own_inserts_do(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = backend.engine()
    await upgrade(engine)
    async with engine.begin() as conn:
        await writes.apply(conn, full_call("fast", "CA" + "1" * 32), store_transcripts=True)

    # The same entries through SQLAlchemy's parameter handling (what a dialect without
    # positional parameters would take).
    original = writes._RowInsert.__init__

    def without_driver_sql(self: Any, conn: Any, table: Any) -> None:
        original(self, conn, table)
        self._sql = None

    monkeypatch.setattr(writes, "_ROW_INSERTS", {})
    monkeypatch.setattr(writes._RowInsert, "__init__", without_driver_sql)
    async with engine.begin() as conn:
        await writes.apply(conn, full_call("generic", "CA" + "2" * 32), store_transcripts=True)

    fast, generic = await _child_rows(backend, "fast"), await _child_rows(backend, "generic")
    assert all(fast.values()), "every child table has rows of the call"
    assert fast == generic
    # Times come back as the same aware UTC datetimes, whichever path wrote them.
    (first_line, *_) = fast["callbridge_transcript_entries"]
    assert first_line[1].utcoffset() is not None
