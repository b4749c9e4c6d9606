"""The history search and the overview's figures, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime

from callbridge.records.entries import (
    CallClosed,
    CallError,
    CallOpened,
    RecordEntry,
    TranscriptLine,
    TurnLatency,
)
from callbridge.records.queries import CallQuery, parse_number
from tests.records.conftest import T0, StoreFactory, full_call


def other_call() -> list[RecordEntry]:
    """An inbound call an hour later, ended by the operator, with words of its own."""
    at = T0 + 3600
    return [
        CallOpened(
            "call-2", 0, at, "inbound", from_number="+442079460000", to_number="+15550009999"
        ),
        TranscriptLine("call-2", 1, at + 1, "caller", "I want a REFUND for 100% of it"),
        TurnLatency("call-2", 2, at + 2, "r1", 500.0, 600.0, None, None),
        CallError("call-2", 3, at + 3, "agent", "boom"),
        CallClosed("call-2", 4, at + 4, "operator", "operator-hang-up"),
    ]


async def _ids(store: object, **query: object) -> list[str]:
    page = await store.list_calls(CallQuery(**query))  # type: ignore[attr-defined]
    return [c.call_id for c in page.calls]


async def test_history_filters(make_store: StoreFactory) -> None:
    store = make_store()
    await store.start()
    for entry in [*full_call(), *other_call()]:
        store.submit(entry)
    await store.flush()

    assert await _ids(store) == ["call-2", "call-1"]
    # Words: each must be said somewhere in the call, in any case; LIKE's wildcards are text.
    assert await _ids(store, words="refund") == ["call-2"]
    assert await _ids(store, words="bike READY") == ["call-1"]
    assert await _ids(store, words="bike refund") == []
    assert await _ids(store, words="100%") == ["call-2"]
    assert await _ids(store, words="%") == ["call-2"]
    assert await _ids(store, words="_") == []
    # Part of either number.
    assert await _ids(store, number="7650000") == ["call-1"]
    assert await _ids(store, number="+1555") == ["call-2", "call-1"]
    assert await _ids(store, number="_") == []
    assert await _ids(store, ended_by="operator") == ["call-2"]
    assert await _ids(store, ended_by="caller") == ["call-1"]
    assert await _ids(store, direction="inbound") == ["call-2"]
    middle = datetime.datetime.fromtimestamp(T0 + 1800, datetime.UTC)
    assert await _ids(store, since=middle) == ["call-2"]
    assert await _ids(store, until=middle) == ["call-1"]


async def test_overview_rows(make_store: StoreFactory) -> None:
    store = make_store()
    await store.start()
    for entry in [*full_call(), *other_call()]:
        store.submit(entry)
    await store.flush()
    rows = await store.overview(datetime.datetime.fromtimestamp(T0 - 60, datetime.UTC))
    assert [(status, ended_by) for _, status, ended_by in rows.calls] == [
        ("completed", "caller"),
        ("completed", "operator"),
    ]
    # The audible latency when there is one, else the first audio's.
    assert [ms for _, ms in rows.turn_latencies] == [1590.0, 600.0]
    assert len(rows.agent_errors) == 2
    later = await store.overview(datetime.datetime.fromtimestamp(T0 + 1800, datetime.UTC))
    assert len(later.calls) == 1
    assert len(later.turn_latencies) == 1


def test_parse_number() -> None:
    assert parse_number(" +1 (555) 765-0000 ") == "+15557650000"
    assert parse_number("7650") == "7650"
