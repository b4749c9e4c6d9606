"""CallStore against real databases: what goes in comes out once, whatever the order,
however often it is replayed; restarts, retention, and calls kept without their words."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy

from callbridge.records import spool
from callbridge.records.entries import (
    CallAction,
    CallClosed,
    CallOpened,
    CallSetupDone,
    CallStatusChanged,
    SessionConfigured,
    ToolInvocation,
    TranscriptLine,
)
from callbridge.records.queries import CallQuery
from callbridge.records.store import CallStore

from .conftest import FAST, INSTANCE, T0, Backend, Events, StoreFactory, full_call, iso

SID = "CA" + "1" * 32
ENTRY_TABLES = {
    "callbridge_calls": 1,
    "callbridge_call_statuses": 3,
    "callbridge_agent_sessions": 2,
    "callbridge_transcript_entries": 4,
    "callbridge_tool_calls": 2,
    "callbridge_turn_latencies": 1,
    "callbridge_call_errors": 1,
    "callbridge_call_actions": 3,
    "callbridge_session_configs": 1,
}


def as_json(value: object) -> Any:
    return json.loads(msgspec.json.encode(value))


def expected_detail() -> dict[str, Any]:
    return {
        "call_id": "call-1",
        "call_sid": SID,
        "direction": "outbound",
        "from_number": "+15551230000",
        "to_number": "+15557650000",
        "status": "completed",
        "started_at": iso(T0),
        "answered_at": iso(T0 - 0.5),
        "ended_at": iso(T0 + 8.0),
        "duration_seconds": 8.0,
        "ended_by": "caller",
        "end_reason": "caller hung up",
        "stream_sid": "MZ" + "2" * 32,
        "instance_id": INSTANCE,
        "resumes": 1,
        "statuses": [
            {"status": "ringing", "at": iso(T0 - 2), "sequence": 1, "duration_seconds": None},
            {
                "status": "in-progress",
                "at": iso(T0 - 0.5),
                "sequence": 2,
                "duration_seconds": None,
            },
            {"status": "completed", "at": iso(T0 + 8.5), "sequence": 3, "duration_seconds": 9},
        ],
        "agent_sessions": [
            {
                "seq": 1,
                "session_id": "sess-a",
                "at": iso(T0 + 0.2),
                "offset_seconds": 0.2,
                "resumed": False,
            },
            {
                "seq": 8,
                "session_id": "sess-b",
                "at": iso(T0 + 6.0),
                "offset_seconds": 6.0,
                "resumed": True,
            },
        ],
        "transcript": [
            {
                "seq": 2,
                "at": iso(T0 + 0.5),
                "offset_seconds": 0.5,
                "role": "agent",
                "text": "Hi, this is the bike shop.",
                "reply_id": "r1",
                "interrupted": False,
                "generated_seconds": 2.5,
                "heard_seconds": 2.5,
            },
            {
                "seq": 3,
                "at": iso(T0 + 4.0),
                "offset_seconds": 4.0,
                "role": "caller",
                "text": "Is my bike ready?",
                "reply_id": None,
                "interrupted": False,
                "generated_seconds": None,
                "heard_seconds": None,
            },
            {
                "seq": 6,
                "at": iso(T0 + 5.0),
                "offset_seconds": 5.0,
                "role": "agent",
                "text": "Yes, it is ready for pick-up today",
                "reply_id": "r2",
                "interrupted": True,
                "generated_seconds": 3.2,
                "heard_seconds": 1.25,
            },
            {
                "seq": 10,
                "at": iso(T0 + 7.0),
                "offset_seconds": 7.0,
                "role": "caller",
                "text": "Great, thanks, bye.",
                "reply_id": None,
                "interrupted": False,
                "generated_seconds": None,
                "heard_seconds": None,
            },
        ],
        "tool_calls": [
            {
                "seq": 4,
                "at": iso(T0 + 4.6),
                "offset_seconds": 4.6,
                "tool_call_id": "tool-1",
                "name": "repair_status",
                "arguments": {"ticket": 42},
                "result": '{"ready":true}',
                "is_error": False,
                "duration_ms": 85.5,
                "discarded": False,
            },
            {
                "seq": 7,
                "at": iso(T0 + 5.5),
                "offset_seconds": 5.5,
                "tool_call_id": "tool-2",
                "name": "book_slot",
                "arguments": {"day": "sat"},
                "result": None,
                "is_error": False,
                "duration_ms": None,
                "discarded": True,
            },
        ],
        "turn_latencies": [
            {
                "seq": 5,
                "at": iso(T0 + 4.9),
                "offset_seconds": 4.9,
                "reply_id": "r2",
                "to_first_audio_sent_ms": 640.0,
                "to_first_audio_played_ms": 710.0,
                "to_first_audible_sent_ms": 1520.0,
                "to_first_audible_played_ms": 1590.0,
            }
        ],
        "errors": [
            {
                "seq": 9,
                "at": iso(T0 + 6.1),
                "offset_seconds": 6.1,
                "source": "agent",
                "code": "connection_lost",
                "message": "resumed within 30 s",
            }
        ],
        "actions": [
            {
                "seq": 11,
                "at": iso(T0 + 7.2),
                "offset_seconds": 7.2,
                "verb": "keypad-entry",
                "by": "caller",
                "outcome": "entered",
                "detail": "4 keys",
                "target": None,
                "started_at": None,
            },
            {
                "seq": 12,
                "at": iso(T0 + 7.5),
                "offset_seconds": 7.5,
                "verb": "transfer",
                "by": "agent",
                "outcome": "busy",
                "detail": "",
                "target": "a person",
                "started_at": iso(T0 + 6.5),
            },
            {
                "seq": 14,
                "at": iso(T0 + 7.7),
                "offset_seconds": 7.7,
                "verb": "hang-up",
                "by": "agent",
                "outcome": "after-goodbye",
                "detail": "",
                "target": None,
                "started_at": None,
            },
        ],
        "audio": {
            "frames_from_twilio": 400,
            "frames_to_agent": 390,
            "frames_to_twilio": 350,
            "dropped": {"before_ready": 10, "after_clear": 3},
        },
        "bot": "shop",
        "parameters": {"name": "Alice", "ticket": "42"},
        "setup": {"outcome": "configured", "detail": None, "error": None},
        "session_configs": [
            {
                "seq": 13,
                "at": iso(T0 + 7.6),
                "offset_seconds": 7.6,
                "config": {
                    "system_prompt": "You call Alice about her bike.",
                    "greeting": "Hi Alice, this is the bike shop.",
                    "input": {"keyterms": ["Brompton"], "transcription_prompt": "A bike shop."},
                    "output": {"voice": "alba", "volume": 80},
                    "tools": [{"type": "function", "name": "repair_status"}],
                },
            }
        ],
    }


async def table_counts(backend: Backend) -> dict[str, int]:
    return {table: await backend.count(table) for table in ENTRY_TABLES}


async def test_a_full_call_reads_back_in_the_detail_shape(make_store: StoreFactory) -> None:
    store = make_store()
    await store.start()
    for entry in full_call():
        store.submit(entry)
    await store.flush()

    detail = await store.get_call("call-1")
    assert detail is not None
    assert as_json(detail) == expected_detail()
    by_sid = await store.get_call(SID)
    assert by_sid is not None and by_sid.call_id == "call-1"
    page = await store.list_calls(CallQuery())
    summary = {k: v for k, v in expected_detail().items() if k in as_json(page.calls[0])}
    assert [as_json(c) for c in page.calls] == [summary]
    assert page.next_cursor is None


async def test_entries_in_any_order_make_the_same_record(make_store: StoreFactory) -> None:
    store = make_store()
    await store.start()
    for entry in reversed(full_call()):  # closed before opened, statuses last-first
        store.submit(entry)
    await store.flush()
    detail = await store.get_call("call-1")
    assert detail is not None and as_json(detail) == expected_detail()


async def test_entries_submitted_twice_are_stored_once(
    make_store: StoreFactory, backend: Backend
) -> None:
    store = make_store()
    await store.start()
    for entry in full_call():
        store.submit(entry)
    await store.flush()
    for entry in full_call():  # a second batch, after the first is committed
        store.submit(entry)
    for entry in full_call():  # and twice within one batch
        store.submit(entry)
    await store.flush()
    assert await table_counts(backend) == ENTRY_TABLES
    assert store.stats().rejected == 0, "duplicates are no-ops, not errors"
    detail = await store.get_call("call-1")
    assert detail is not None and as_json(detail) == expected_detail()


async def test_a_spool_replayed_twice_is_stored_once(
    make_store: StoreFactory, backend: Backend, tmp_path: Path
) -> None:
    spool_path = tmp_path / "spool.jsonl"
    lines = spool.encode(full_call())
    for _ in range(2):  # as if the process died after committing, before emptying the spool
        spool_path.write_bytes(lines)
        store = make_store()
        await store.start()
        await store.flush()
        assert store.stats().rejected == 0, "duplicates are no-ops, not errors"
        await store.close()
        assert not spool_path.exists(), "a committed spool is emptied (and removed on close)"
    assert await table_counts(backend) == ENTRY_TABLES
    store = make_store()
    await store.start()
    detail = await store.get_call("call-1")
    assert detail is not None and as_json(detail) == expected_detail()


async def test_a_spool_written_before_the_upgrade_is_replayed(
    make_store: StoreFactory, backend: Backend, tmp_path: Path
) -> None:
    # The verbs (hang-ups, keypad entries...) were spooled as a kind of their own, which
    # this version no longer writes: they are replayed as the call's actions all the same.
    lines = []
    for entry in full_call():
        if isinstance(entry, CallAction) and entry.verb != "transfer":
            old = {
                "call_id": entry.call_id,
                "seq": entry.seq,
                "at": entry.at,
                "verb": entry.verb,
                "by": entry.by,
                "outcome": entry.outcome,
                "detail": entry.detail,
            }
            lines.append(msgspec.json.encode(["CallVerb", old]) + b"\n")
        else:
            lines.append(spool.encode([entry]))
    assert sum(line.startswith(b'["CallVerb"') for line in lines) == 2
    (tmp_path / "spool.jsonl").write_bytes(b"".join(lines))
    store = make_store()
    await store.start()
    await store.flush()
    assert store.stats().rejected == 0
    assert await table_counts(backend) == ENTRY_TABLES
    detail = await store.get_call("call-1")
    assert detail is not None and as_json(detail) == expected_detail()


async def test_a_torn_last_line_in_the_spool_is_cut_off(
    make_store: StoreFactory, backend: Backend, tmp_path: Path
) -> None:
    # A crash mid-write left half a line; the next process appends after it, and dies too
    # (here: closes with the database down); the one after that must read every whole line.
    entries = full_call()
    data = spool.encode(entries)
    (tmp_path / "spool.jsonl").write_bytes(data + b'["TranscriptLine",{"call_id":"call-1","se')
    await backend.cut()
    limits = dataclasses.replace(FAST, startup_timeout=0.2)
    second = make_store(limits=limits)
    await second.start()
    second.submit(TranscriptLine("call-1", 12, T0 + 7.5, "caller", "after the torn line"))
    await second.wait_durable()
    await second.close(timeout=0.2)
    await backend.restore()

    third = make_store()
    await third.start()
    await third.flush()
    detail = await third.get_call("call-1")
    assert detail is not None
    assert [t.seq for t in detail.transcript] == [2, 3, 6, 10, 12]


async def test_status_callbacks_out_of_order_and_for_unknown_calls(
    make_store: StoreFactory,
) -> None:
    sid = "CA" + "9" * 32
    store = make_store()
    await store.start()
    # Twilio's callbacks for a call this server never streamed, last one first, one repeated.
    store.submit(CallStatusChanged(sid, "no-answer", T0 + 30, sequence=2, direction="outbound-api"))
    store.submit(
        CallStatusChanged(
            sid, "ringing", T0 + 1, sequence=1, direction="outbound-api", to_number="+15550001111"
        )
    )
    store.submit(CallStatusChanged(sid, "no-answer", T0 + 30, sequence=2))
    store.submit(CallStatusChanged(sid, "queued", T0, sequence=0))
    await store.flush()

    page = await store.list_calls(CallQuery())
    assert [(c.call_id, c.call_sid, c.status, c.direction) for c in page.calls] == [
        (sid, sid, "no-answer", "outbound")
    ]
    stub = page.calls[0]
    assert stub.started_at == datetime.datetime.fromtimestamp(T0, datetime.UTC)
    assert stub.to_number == "+15550001111"
    assert stub.ended_at == datetime.datetime.fromtimestamp(T0 + 30, datetime.UTC)
    detail = await store.get_call(sid)
    assert detail is not None
    assert [(s.status, s.sequence) for s in detail.statuses] == [
        ("queued", 0),
        ("ringing", 1),
        ("no-answer", 2),
    ]
    assert (await store.list_calls(CallQuery(status="no-answer"))).calls == page.calls
    assert (await store.list_calls(CallQuery(status="ringing"))).calls == []

    # An older callback in a later batch (Twilio retries) does not move the status back.
    store.submit(CallStatusChanged(sid, "ringing", T0 + 1, sequence=1))
    store.submit(CallStatusChanged(sid, "initiated", T0 + 0.5, sequence=0))
    await store.flush()
    assert [c.status for c in (await store.list_calls(CallQuery())).calls] == ["no-answer"]


async def test_a_stub_from_early_callbacks_becomes_the_call_when_it_streams(
    make_store: StoreFactory, backend: Backend
) -> None:
    sid = "CA" + "7" * 32
    store = make_store()
    await store.start()
    store.submit(CallStatusChanged(sid, "ringing", T0 - 1, sequence=1))
    await store.flush()
    assert [c.call_id for c in (await store.list_calls(CallQuery())).calls] == [sid]

    store.submit(CallOpened("c-7", 0, T0, "inbound", call_sid=sid, from_number="+15551112222"))
    store.submit(CallStatusChanged(sid, "completed", T0 + 9, sequence=3))
    store.submit(CallStatusChanged(sid, "in-progress", T0, sequence=2))  # late, older
    await store.flush()
    page = await store.list_calls(CallQuery())
    assert [(c.call_id, c.status) for c in page.calls] == [("c-7", "completed")]
    assert await backend.count("callbridge_calls") == 1
    detail = await store.get_call(sid)
    assert detail is not None and detail.call_id == "c-7"
    assert [s.status for s in detail.statuses] == ["ringing", "in-progress", "completed"]
    assert detail.answered_at == datetime.datetime.fromtimestamp(T0, datetime.UTC)


async def test_an_odd_character_in_a_callers_number_does_not_lose_the_call(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    await store.start()
    # PostgreSQL refuses NUL; the From header is the caller's to fill.
    store.submit(CallOpened("odd", 0, T0, "inbound", call_sid=SID, from_number="+1555\x00123"))
    await store.flush()
    detail = await store.get_call("odd")
    assert detail is not None and detail.call_sid == SID
    assert detail.from_number == "+1555\ufffd123"
    assert store.stats().rejected == 0


async def test_status_without_callbacks_follows_the_record(make_store: StoreFactory) -> None:
    store = make_store()
    await store.start()
    store.submit(CallOpened("live", 0, T0, "inbound"))
    store.submit(CallOpened("done", 0, T0 + 1, "inbound"))
    store.submit(CallClosed("done", 1, T0 + 5, "agent", "goodbye"))
    await store.flush()
    statuses = {c.call_id: c.status for c in (await store.list_calls(CallQuery())).calls}
    assert statuses == {"live": "in-progress", "done": "completed"}
    answered = {c.call_id: c.answered_at for c in (await store.list_calls(CallQuery())).calls}
    assert answered["live"] == datetime.datetime.fromtimestamp(T0, datetime.UTC)


async def test_restart_closes_only_this_instances_calls_left_open(
    make_store: StoreFactory,
) -> None:
    first = make_store()
    await first.start()
    first.submit(CallOpened("left-open", 0, T0, "inbound"))
    first.submit(TranscriptLine("left-open", 1, T0 + 3, "caller", "hello?"))
    first.submit(CallOpened("elsewhere", 0, T0, "inbound", instance_id="other-box"))
    first.submit(CallOpened("finished", 0, T0, "inbound"))
    first.submit(CallClosed("finished", 1, T0 + 2, "caller", "caller hung up"))
    first.submit(CallOpened("still-live", 0, T0, "outbound"))
    await first.flush()
    await first.close()

    second = make_store()
    # The same call, live in this process (announced before the store finished starting).
    second.submit(CallOpened("still-live", 0, T0, "outbound"))
    await second.start()
    await second.flush()
    ended = {
        c.call_id: (c.ended_by, c.end_reason, c.ended_at)
        for c in (await second.list_calls(CallQuery())).calls
    }
    assert ended == {
        "left-open": (
            "restart",
            "interrupted by restart",
            datetime.datetime.fromtimestamp(T0 + 3, datetime.UTC),
        ),
        "elsewhere": (None, None, None),
        "finished": (
            "caller",
            "caller hung up",
            datetime.datetime.fromtimestamp(T0 + 2, datetime.UTC),
        ),
        "still-live": (None, None, None),
    }


async def test_retention_purges_old_calls_with_everything_about_them(
    make_store: StoreFactory, backend: Backend
) -> None:
    now = datetime.datetime.now(datetime.UTC).timestamp()
    old, recent = now - 10 * 86400, now - 86400
    writer = make_store()
    await writer.start()
    for entry in full_call("old-call", "CA" + "0" * 32):
        writer.submit(msgspec.structs.replace(entry, at=entry.at - T0 + old))
    writer.submit(CallStatusChanged("CA" + "5" * 32, "busy", old, sequence=1))  # stub only
    for entry in full_call("new-call", "CA" + "3" * 32):
        writer.submit(msgspec.structs.replace(entry, at=entry.at - T0 + recent))
    await writer.flush()
    await writer.close()
    assert await backend.count("callbridge_calls") == 3

    keeper = make_store(retention_days=7)
    await keeper.start()  # purges at start
    assert [c.call_id for c in (await keeper.list_calls(CallQuery())).calls] == ["new-call"]
    for table, rows in ENTRY_TABLES.items():
        assert await backend.count(table) == rows, table
    # ...and daily: nothing left once the new call is old enough.
    assert await keeper.purge_expired(datetime.datetime.now(datetime.UTC)) == 0
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)
    assert await keeper.purge_expired(later) == 1
    assert await backend.count("callbridge_transcript_entries") == 0
    assert await backend.count("callbridge_call_statuses") == 0


async def test_a_live_calls_row_is_written_once_and_again_after_a_purge(
    make_store: StoreFactory, backend: Backend
) -> None:
    old = datetime.datetime.now(datetime.UTC).timestamp() - 10 * 86400
    store = make_store(retention_days=7)
    await store.start()
    written: list[int] = []

    def count_call_rows(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO CALLBRIDGE_CALLS "):
            written.append(len(params) if isinstance(params, list) else 1)

    sqlalchemy.event.listen(store.engine.sync_engine, "before_cursor_execute", count_call_rows)
    store.submit(CallOpened("live", 0, old, "inbound", call_sid=SID))
    await store.flush()
    assert sum(written) == 1
    for seq in range(1, 4):  # the call's entries, after its row is committed: no placeholder
        store.submit(TranscriptLine("live", seq, old + seq, "caller", "hello"))
        await store.flush()
    assert sum(written) == 1
    # A call longer than the retention (absurd, but possible) loses its row to a purge;
    # the store must not go on assuming the row is there.
    assert await store.purge_expired() == 1
    store.submit(TranscriptLine("live", 4, old + 4, "caller", "still here"))
    await store.flush()
    assert sum(written) == 2
    assert await backend.count("callbridge_calls") == 1


async def test_retention_runs_again_on_its_interval(
    make_store: StoreFactory, backend: Backend
) -> None:
    purged = asyncio.Event()

    class OnPurge(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "records.purged" and getattr(record, "fields", {})["calls"]:
                purged.set()

    handler = OnPurge()
    logger = logging.getLogger("callbridge.records")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        limits = dataclasses.replace(FAST, purge_interval=0.05)
        store = make_store(retention_days=1, limits=limits)
        await store.start()
        store.submit(CallOpened("ancient", 0, T0 - 30 * 86400, "inbound"))
        await store.flush()
        assert await backend.count("callbridge_calls") == 1
        async with asyncio.timeout(10):
            await purged.wait()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert await backend.count("callbridge_calls") == 0


WORDS = (
    "Zanzibar",
    "marmalade",
    "platypus",
    "quokka-7731",
    "Philomena",
    "Wombatwear",
    "Aardvarkia",
    "Xylophonix",
)


def wordy_call() -> list[Any]:
    return [
        CallSetupDone("quiet", T0 - 1, "inbound", "configured", "default", {"name": WORDS[4]}),
        CallOpened("quiet", 0, T0, "inbound", call_sid="CA" + "4" * 32),
        SessionConfigured(
            "quiet",
            5,
            T0 + 0.5,
            {
                "system_prompt": f"Greet {WORDS[4]}",
                "greeting": f"Hello {WORDS[5]}",
                "input": {"keyterms": [WORDS[6]], "transcription_prompt": WORDS[7]},
                "output": {"voice": "alba"},
            },
        ),
        TranscriptLine("quiet", 1, T0 + 1, "caller", f"I live in {WORDS[0]}"),
        TranscriptLine("quiet", 2, T0 + 2, "agent", f"Lovely {WORDS[1]}", "r1", True, 2.0, 0.5),
        ToolInvocation("quiet", 3, T0 + 3, "t1", "lookup", {"animal": WORDS[2]}, WORDS[3]),
        CallClosed("quiet", 4, T0 + 4, "caller", "caller hung up"),
    ]


async def test_without_transcripts_no_words_reach_the_spool_or_the_database(
    make_store: StoreFactory, backend: Backend, tmp_path: Path
) -> None:
    store = make_store(store_transcripts=False)
    await store.start()
    await backend.cut()  # so that the entries sit in the spool for a look
    for entry in wordy_call():
        store.submit(entry)
    await store.wait_durable()
    spooled = (tmp_path / "spool.jsonl").read_bytes()
    assert b"quiet" in spooled and b"lookup" in spooled
    for word in WORDS:
        assert word.encode() not in spooled
    await backend.restore()
    await store.flush()
    await store.close()

    detail_store = make_store()
    await detail_store.start()
    detail = await detail_store.get_call("quiet")
    assert detail is not None
    assert [t.text for t in detail.transcript] == [None, None]
    assert detail.transcript[1].interrupted and detail.transcript[1].heard_seconds == 0.5
    assert [(t.name, t.arguments, t.result) for t in detail.tool_calls] == [("lookup", None, None)]
    assert detail.parameters == {"name": None}
    [config] = detail.session_configs
    assert config.config["system_prompt"] is None and config.config["greeting"] is None
    assert config.config["input"] == {"keyterms": None, "transcription_prompt": None}
    assert config.config["output"] == {"voice": "alba"}
    dumped = await backend.dump()
    assert "lookup" in dumped
    for word in WORDS:
        assert word not in dumped
    if backend.name == "sqlite":
        assert _files_with_words(tmp_path) == []


def _files_with_words(folder: Path) -> list[Path]:
    files = list(folder.glob("records.db*"))
    assert files
    return [p for p in files for word in WORDS if word.encode() in p.read_bytes()]


async def test_with_transcripts_the_words_are_kept(make_store: StoreFactory) -> None:
    # The other side of the test above: the same call, words stored.
    store = make_store()
    await store.start()
    for entry in wordy_call():
        store.submit(entry)
    await store.flush()
    detail = await store.get_call("quiet")
    assert detail is not None
    assert WORDS[0] in (detail.transcript[0].text or "")
    assert detail.tool_calls[0].arguments == {"animal": WORDS[2]}


async def test_submit_never_raises_and_refuses_past_its_bounds(make_store: StoreFactory) -> None:
    store = make_store(limits=dataclasses.replace(FAST, max_queue=3))
    store.submit("not an entry")  # type: ignore[arg-type]
    for seq in range(5):  # not started: nothing drains the queue
        store.submit(TranscriptLine("bounded", seq, T0 + seq, "caller", "x"))
    assert (store.stats().submitted, store.stats().dropped) == (3, 3)
    await store.start()
    await store.flush()
    detail = await store.get_call("bounded")
    assert detail is not None and [t.seq for t in detail.transcript] == [0, 1, 2]
    await store.close()
    store.submit(TranscriptLine("bounded", 9, T0, "caller", "after close"))
    assert store.stats().dropped == 4


async def test_an_entry_the_database_refuses_is_set_aside_not_blocking_others(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(limits=dataclasses.replace(FAST, poison_strikes=2))
    await store.start()
    bad = TranscriptLine("poison", 1, float("nan"), "caller", "when?")
    store.submit(CallOpened("poison", 0, T0, "inbound"))
    store.submit(bad)
    store.submit(TranscriptLine("poison", 2, T0 + 1, "caller", "hello"))
    await store.flush()
    detail = await store.get_call("poison")
    assert detail is not None and [t.seq for t in detail.transcript] == [2]
    assert store.stats().rejected == 1
    rejected = (tmp_path / "spool.jsonl.rejected").read_bytes().splitlines()
    assert len(rejected) == 1 and b'"seq":1' in rejected[0]

    store.submit(bad)  # alone: retried (it might be the database), then set aside
    await store.flush()
    assert store.stats().rejected == 2


async def test_flush_waits_for_the_commit_and_close_flushes(
    make_store: StoreFactory, backend: Backend, events: Events
) -> None:
    store = make_store()
    await store.start()
    await backend.cut()
    store.submit(CallOpened("waiting", 0, T0, "inbound"))
    await store.wait_durable()
    flushed = asyncio.ensure_future(store.flush())
    await events.wait_for("records.db_retry_failed", times=2)
    assert not flushed.done()
    await backend.restore()
    async with asyncio.timeout(10):
        await flushed
    assert await backend.count("callbridge_calls") == 1
    store.submit(CallClosed("waiting", 1, T0 + 1, "caller", "bye"))
    await store.close()  # flushes on the way out
    assert await backend.count("callbridge_calls", "ended_by = 'caller'") == 1


async def test_start_without_a_spool_is_a_clear_error(backend: Backend, tmp_path: Path) -> None:
    from callbridge.records import database
    from callbridge.records.spool import SpoolError

    store = CallStore(
        database.create_engine(backend.url),
        tmp_path / "missing-dir" / "spool.jsonl",
        instance_id=INSTANCE,
    )
    with pytest.raises(SpoolError, match="CALLBRIDGE_SPOOL_PATH: cannot open"):
        await store.start()
    await store.close()


async def test_two_stores_cannot_share_a_spool(make_store: StoreFactory) -> None:
    from callbridge.records.spool import SpoolError

    first = make_store()
    await first.start()
    second = make_store()
    with pytest.raises(SpoolError, match="in use by another process"):
        await second.start()


async def test_close_leaves_no_task_or_thread_running(
    make_store: StoreFactory, backend: Backend
) -> None:
    import threading

    before = set(threading.enumerate())
    store = make_store()
    await store.start()
    for entry in full_call():
        store.submit(entry)
    await store.flush()
    await backend.cut()  # and close in the middle of an outage
    store.submit(CallOpened("late", 0, T0, "inbound"))
    await store.wait_durable()
    assert any(t.get_name().startswith("callbridge-records") for t in asyncio.all_tasks())
    await store.close(timeout=0.3)
    await backend.restore()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("callbridge-records")]
    # A driver thread caught in SQLite's busy wait when close gave up cannot be interrupted;
    # it must end once the lock is gone, not live on.
    for thread in set(threading.enumerate()) - before:
        thread.join(10.0)  # the loop has nothing else to do meanwhile
    assert [t.name for t in set(threading.enumerate()) - before] == []


def test_from_settings() -> None:
    import socket

    from callbridge.config import Settings

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url="postgresql://u:pw@db.internal/calls",
        callbridge_spool_path="/var/spool/cb.jsonl",
        store_transcripts=False,
        retention_days=30,
    )
    store = CallStore.from_settings(settings)
    assert store.engine.url.drivername == "postgresql+asyncpg"
    assert store.instance_id == socket.gethostname()
    assert (store.store_transcripts, store.retention_days) == (False, 30)
    named = CallStore.from_settings(settings.model_copy(update={"callbridge_instance_id": "b-2"}))
    assert named.instance_id == "b-2"
    with pytest.raises(ValueError, match="DATABASE_URL: unsupported database 'mysql'"):
        CallStore.from_settings(settings.model_copy(update={"database_url": "mysql://db/x"}))


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll (bounded) until `condition` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("timed out waiting for the store")


async def test_entries_are_gathered_into_few_spool_writes_and_transactions(
    make_store: StoreFactory, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from callbridge.records import writes

    store = make_store(limits=dataclasses.replace(FAST, spool_window=0.3, commit_interval=60.0))
    await store.start()
    spool_writes: list[bytes] = []
    transactions: list[int] = []
    append, apply = store._spool.append, writes.apply

    def counting_append(data: bytes) -> tuple[int, int]:
        spool_writes.append(data)
        return append(data)

    async def counting_apply(conn: Any, entries: Any, **kwargs: Any) -> None:
        transactions.append(len(entries))
        await apply(conn, entries, **kwargs)

    monkeypatch.setattr(store._spool, "append", counting_append)
    monkeypatch.setattr(writes, "apply", counting_apply)

    calls = [full_call(f"call-{i}", f"CA{i:032d}") for i in range(3)]
    for entries in zip(*calls, strict=True):  # interleaved, as live calls submit them
        for entry in entries:
            store.submit(entry)
            await asyncio.sleep(0)
    total = 3 * len(calls[0])
    # The window passes: one write, then the first commit at once.
    await until(lambda: bool(spool_writes) and store.stats().committed == total)
    assert len(spool_writes) == 1 and store.stats().durable == total
    assert transactions == [total]

    for entry in full_call("call-3", "CA" + "3" * 32):
        store.submit(entry)
    await until(lambda: len(spool_writes) >= 2 and store.stats().durable == total + len(calls[0]))
    assert len(spool_writes) == 2, "spooled after the window"
    assert len(transactions) == 1, "not committed before the commit interval"
    assert store.stats().committed == total
    async with asyncio.timeout(2):
        await store.flush()  # does not wait out the interval
    assert transactions == [total, len(calls[0])]
    assert await backend.count("callbridge_calls") == 4
    assert await backend.count("callbridge_calls", "twilio_status = 'completed'") == 4


async def test_waiting_cuts_the_windows_short(
    make_store: StoreFactory, backend: Backend, tmp_path: Path
) -> None:
    store = make_store(limits=dataclasses.replace(FAST, spool_window=60.0, commit_interval=60.0))
    await store.start()
    store.submit(CallOpened("first", 0, T0, "inbound"))
    async with asyncio.timeout(2):
        await store.flush()  # spooled and committed without waiting a window
    store.submit(CallClosed("first", 1, T0 + 1, "caller", "bye"))
    async with asyncio.timeout(2):
        await store.wait_durable()
    assert b"CallClosed" in (tmp_path / "spool.jsonl").read_bytes()
    assert store.stats().committed == 1, "durable, not committed: the commit interval holds"
    store.submit(CallOpened("second", 0, T0 + 2, "inbound"))
    async with asyncio.timeout(2):
        await store.close()  # spools and commits everything at once
    assert await backend.count("callbridge_calls") == 2
    assert await backend.count("callbridge_calls", "ended_by = 'caller'") == 1


def test_the_rejected_file_is_rotated_not_grown_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from callbridge.records import committer

    monkeypatch.setattr(committer, "REJECTED_MAX_BYTES", 100)
    path = tmp_path / "spool.jsonl.rejected"
    for n in range(12):
        committer.append_rejected(path, b'{"n":%d,"pad":"xxxxxxxxxx"}\n' % n)
    older = path.with_name(path.name + ".1")
    assert sorted(tmp_path.iterdir()) == [path, older]
    assert path.stat().st_size <= 100 and older.stat().st_size <= 100
    # The newest lines are kept, in order, across the two files; the oldest are gone.
    kept = [json.loads(line)["n"] for f in (older, path) for line in f.read_bytes().splitlines()]
    assert kept == list(range(12 - len(kept), 12)) and 0 not in kept
