"""Applying a batch of record entries to the database, idempotently.

Every statement is keyed on what identifies the fact, so applying a batch twice (a replayed
spool, a retry after a commit whose acknowledgement was lost) changes nothing, and the order
in which entries of different kinds arrive does not matter:

- entries: INSERT ... ON CONFLICT (call_id, seq) DO NOTHING;
- status callbacks: INSERT ... ON CONFLICT (call_sid, sequence, status) DO NOTHING, then the
  call's latest status is moved forward only (compare-and-set on Twilio's SequenceNumber,
  which stays correct when instances sharing a database race);
- a call's row: created by whichever of its entries comes first, completed by CallOpened
  and CallClosed with plain upserts/updates.

A status callback for a CallSid no row has yet creates a stub row (call_id = CallSid); the
call's CallOpened replaces it, so a call is listed once.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import msgspec
from sqlalchemy import (
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.records import config_redaction
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
from callbridge.records.tables import (
    CALL_CHILD_TABLES,
    NO_SEQUENCE,
    agent_sessions,
    call_actions,
    call_errors,
    call_statuses,
    calls,
    session_configs,
    tool_calls,
    transcript_entries,
    turn_latencies,
)

RESTART_ENDED_BY = "restart"
RESTART_REASON = "interrupted by restart"


def without_words(entry: RecordEntry) -> RecordEntry:
    """The entry as stored with STORE_TRANSCRIPTS=false: no transcript text, no tool
    arguments or results, no prompt or greeting, no custom parameters' values."""
    if isinstance(entry, SessionConfigured):
        return msgspec.structs.replace(entry, config=config_redaction.without_words(entry.config))
    if isinstance(entry, CallSetupDone) and any(entry.parameters.values()):
        return msgspec.structs.replace(entry, parameters=dict.fromkeys(entry.parameters, ""))
    if isinstance(entry, TranscriptLine) and entry.text:
        return msgspec.structs.replace(entry, text="")
    if isinstance(entry, ToolInvocation) and (entry.arguments or entry.result is not None):
        return msgspec.structs.replace(entry, arguments={}, result=None)
    return entry


def utc(at: float) -> datetime.datetime:
    """Epoch seconds from an entry as an aware UTC datetime."""
    if not math.isfinite(at):
        raise ValueError("entry time is not a finite number")
    return datetime.datetime.fromtimestamp(at, datetime.UTC)


def _text(value: str | None) -> str | None:
    # PostgreSQL refuses NUL characters, and no database takes lone surrogates: one odd
    # character must not make a record unwritable.
    if value is None or (value.isascii() and "\x00" not in value):
        return value
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _json(value: Any) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(str(k)): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return _text(str(value))


def twilio_direction(direction: str | None) -> str | None:
    """Twilio's Direction (inbound, outbound-api, outbound-dial) as ours."""
    if direction is None:
        return None
    return "outbound" if direction.startswith("outbound") else "inbound"


def _insert(conn: AsyncConnection, table: Table) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def apply(
    conn: AsyncConnection,
    entries: Sequence[RecordEntry],
    *,
    store_transcripts: bool,
    known_calls: Collection[str] = (),
) -> None:
    """Write `entries` within the caller's transaction. `known_calls`: calls whose row is
    known to be in the database already (committed earlier), which need no placeholder."""
    if not store_transcripts:
        entries = [without_words(e) for e in entries]
    opened: dict[str, CallOpened] = {}
    set_up: dict[str, CallSetupDone] = {}
    closed: dict[str, CallClosed] = {}
    statuses: list[CallStatusChanged] = []
    first_seen: dict[str, datetime.datetime] = {}
    rows: dict[Table, list[tuple[Any, ...]]] = {}
    for entry in entries:
        if isinstance(entry, CallStatusChanged):
            statuses.append(entry)
            continue
        at = utc(entry.at)
        if entry.call_id not in first_seen or at < first_seen[entry.call_id]:
            first_seen[entry.call_id] = at
        if isinstance(entry, CallOpened):
            opened[entry.call_id] = entry
        elif isinstance(entry, CallSetupDone):
            set_up[entry.call_id] = entry
        elif isinstance(entry, CallClosed):
            closed[entry.call_id] = entry
        else:
            table, row = _entry_row(entry, at, store_transcripts)
            rows.setdefault(table, []).append(row)

    if statuses:
        await _insert_statuses(conn, statuses)
    if set_up:
        await _set_up_calls(conn, list(set_up.values()), store_transcripts)
    if opened:
        await _open_calls(conn, list(opened.values()))
    placeholders = [
        {"call_id": call_id, "started_at": at, "opened": False}
        for call_id, at in first_seen.items()
        if call_id not in opened and call_id not in set_up and call_id not in known_calls
    ]
    if placeholders:
        # Entries before their CallOpened (or without one): the row exists, to be completed.
        await conn.execute(_insert(conn, calls).on_conflict_do_nothing(), placeholders)
    for table, table_rows in rows.items():
        await _insert_rows(conn, table, table_rows)
    if closed:
        await _close_calls(conn, list(closed.values()))
    if statuses:
        await _apply_statuses(conn, statuses)
    if opened or closed or set_up:
        await _refresh_statuses(conn, [*opened, *closed, *set_up])


def _entry_row(
    entry: RecordEntry, at: datetime.datetime, store_transcripts: bool
) -> tuple[Table, tuple[Any, ...]]:
    """The entry's row of its table, in the table's column order."""
    if isinstance(entry, TranscriptLine):
        return transcript_entries, (
            entry.call_id,
            entry.seq,
            at,
            entry.role,
            _text(entry.text) if store_transcripts else None,
            entry.reply_id,
            entry.interrupted,
            entry.generated_seconds,
            entry.heard_seconds,
        )
    if isinstance(entry, ToolInvocation):
        return tool_calls, (
            entry.call_id,
            entry.seq,
            at,
            entry.tool_call_id,
            _text(entry.name),
            _json(entry.arguments) if store_transcripts else None,
            _text(entry.result) if store_transcripts else None,
            entry.is_error,
            entry.duration_ms,
            entry.discarded,
        )
    if isinstance(entry, AgentSessionStarted):
        return agent_sessions, (entry.call_id, entry.seq, at, entry.session_id, entry.resumed)
    if isinstance(entry, TurnLatency):
        return turn_latencies, (
            entry.call_id,
            entry.seq,
            at,
            entry.reply_id,
            entry.to_first_audio_sent_ms,
            entry.to_first_audio_played_ms,
            entry.to_first_audible_sent_ms,
            entry.to_first_audible_played_ms,
        )
    if isinstance(entry, SessionConfigured):
        return session_configs, (entry.call_id, entry.seq, at, _json(entry.config))
    if isinstance(entry, CallError):
        return call_errors, (
            entry.call_id,
            entry.seq,
            at,
            entry.source,
            _text(entry.code),
            _text(entry.message),
        )
    if isinstance(entry, CallAction):
        return call_actions, (
            entry.call_id,
            entry.seq,
            at,
            _text(entry.verb),
            _text(entry.outcome),
            _text(entry.target),
            None if entry.started_at is None else utc(entry.started_at),
            _text(entry.by),
            _text(entry.detail),
        )
    raise TypeError(f"not a record entry: {type(entry).__name__}")


class _RowInsert:
    """`INSERT ... ON CONFLICT DO NOTHING` of whole rows of one table, compiled once per
    dialect and run with the driver's executemany.

    Through `conn.execute`, SQLAlchemy builds a dict of parameters for every row and passes
    each value through its column's type: the largest part of a commit, paid again for
    every entry of every call. Here a row is a tuple in the table's
    column order, and only the columns whose type converts values (times, booleans, JSON)
    go through that type's bind processor, the same one SQLAlchemy would use.
    """

    def __init__(self, conn: AsyncConnection, table: Table) -> None:
        dialect = conn.dialect
        keys = [column.key for column in table.columns]
        compiled = (
            _insert(conn, table).on_conflict_do_nothing().compile(dialect=dialect, column_keys=keys)
        )
        # Both drivers `database.async_url` allows (aiosqlite's ?, asyncpg's $n) take
        # positional parameters, here in column order: what the tuples fit.
        if compiled.positiontup is None or list(compiled.positiontup) != keys:
            raise RuntimeError(f"{dialect.name}: rows need positional parameters in column order")
        self._sql = compiled.string
        self._processors = [
            (i, processor)
            for i, column in enumerate(table.columns)
            if (processor := column.type.dialect_impl(dialect).bind_processor(dialect))
        ]

    async def run(self, conn: AsyncConnection, rows: list[tuple[Any, ...]]) -> None:
        if self._processors:
            converted = []
            for row in rows:
                values = list(row)
                for i, processor in self._processors:
                    values[i] = processor(values[i])
                converted.append(tuple(values))
            rows = converted
        await conn.exec_driver_sql(self._sql, rows)


# By dialect name: the processors depend on nothing else here (no engine sets its own
# JSON serializer).
_ROW_INSERTS: dict[tuple[str, Table], _RowInsert] = {}


async def _insert_rows(conn: AsyncConnection, table: Table, rows: list[tuple[Any, ...]]) -> None:
    key = (conn.dialect.name, table)
    prepared = _ROW_INSERTS.get(key)
    if prepared is None:
        prepared = _ROW_INSERTS[key] = _RowInsert(conn, table)
    await prepared.run(conn, rows)


async def _insert_statuses(conn: AsyncConnection, statuses: Sequence[CallStatusChanged]) -> None:
    rows = [
        {
            "call_sid": s.call_sid,
            "sequence": NO_SEQUENCE if s.sequence is None else s.sequence,
            "status": s.status,
            "at": utc(s.at),
            "call_id": s.call_id,
            "duration_seconds": s.duration_seconds,
        }
        for s in statuses
    ]
    await conn.execute(_insert(conn, call_statuses).on_conflict_do_nothing(), rows)


async def _open_calls(conn: AsyncConnection, opened: Sequence[CallOpened]) -> None:
    sids = [e.call_sid for e in opened if e.call_sid]
    if sids:
        await _drop_stubs(conn, sids)
    stmt = _insert(conn, calls)
    stmt = stmt.on_conflict_do_update(
        index_elements=[calls.c.call_id],
        set_={
            "call_sid": func.coalesce(stmt.excluded.call_sid, calls.c.call_sid),
            "stream_sid": func.coalesce(stmt.excluded.stream_sid, calls.c.stream_sid),
            "direction": stmt.excluded.direction,
            "from_number": func.coalesce(stmt.excluded.from_number, calls.c.from_number),
            "to_number": func.coalesce(stmt.excluded.to_number, calls.c.to_number),
            "instance_id": stmt.excluded.instance_id,
            "started_at": stmt.excluded.started_at,
            "opened": true(),
        },
    )
    await conn.execute(
        stmt,
        [
            {
                "call_id": e.call_id,
                "call_sid": _text(e.call_sid),
                "stream_sid": _text(e.stream_sid),
                "direction": e.direction,
                "from_number": _text(e.from_number),
                "to_number": _text(e.to_number),
                "instance_id": e.instance_id,
                "started_at": utc(e.at),
                "opened": True,
            }
            for e in opened
        ],
    )


async def _set_up_calls(
    conn: AsyncConnection, set_up: Sequence[CallSetupDone], store_transcripts: bool
) -> None:
    """A call's row from what its set-up decided, before (or instead of) its stream."""
    sids = [e.call_sid for e in set_up if e.call_sid]
    if sids:
        await _drop_stubs(conn, sids)
    stmt = _insert(conn, calls)
    stmt = stmt.on_conflict_do_update(
        index_elements=[calls.c.call_id],
        set_={
            "call_sid": func.coalesce(calls.c.call_sid, stmt.excluded.call_sid),
            "direction": func.coalesce(calls.c.direction, stmt.excluded.direction),
            "from_number": func.coalesce(calls.c.from_number, stmt.excluded.from_number),
            "to_number": func.coalesce(calls.c.to_number, stmt.excluded.to_number),
            "bot_name": stmt.excluded.bot_name,
            "parameters": stmt.excluded.parameters,
            "setup_outcome": stmt.excluded.setup_outcome,
            "setup_detail": stmt.excluded.setup_detail,
            "setup_error": stmt.excluded.setup_error,
        },
    )
    await conn.execute(
        stmt,
        [
            {
                "call_id": e.call_id,
                "call_sid": _text(e.call_sid),
                "direction": e.direction,
                "from_number": _text(e.from_number),
                "to_number": _text(e.to_number),
                "started_at": utc(e.at),
                "opened": False,
                "bot_name": _text(e.bot_name),
                "parameters": _json(
                    e.parameters if store_transcripts else dict.fromkeys(e.parameters)
                ),
                "setup_outcome": _text(e.outcome),
                "setup_detail": _text(e.detail),
                "setup_error": _text(e.error),
            }
            for e in set_up
        ],
    )


async def _drop_stubs(conn: AsyncConnection, call_sids: Iterable[str]) -> None:
    await conn.execute(
        delete(calls).where(
            calls.c.call_id.in_(list(call_sids)),
            calls.c.call_sid == calls.c.call_id,
            calls.c.opened == false(),
        )
    )


async def _close_calls(conn: AsyncConnection, closed: Sequence[CallClosed]) -> None:
    stmt = (
        update(calls)
        .where(calls.c.call_id == bindparam("b_call_id"))
        .values(
            ended_at=bindparam("b_ended_at"),
            ended_by=bindparam("b_ended_by"),
            end_reason=bindparam("b_end_reason"),
            frames_from_twilio=bindparam("b_from_twilio"),
            frames_to_agent=bindparam("b_to_agent"),
            frames_to_twilio=bindparam("b_to_twilio"),
            dropped_frames=bindparam("b_dropped"),
            resumes=bindparam("b_resumes"),
        )
    )
    await conn.execute(
        stmt,
        [
            {
                "b_call_id": e.call_id,
                "b_ended_at": utc(e.at),
                "b_ended_by": e.ended_by,
                "b_end_reason": _text(e.reason),
                "b_from_twilio": e.frames_from_twilio,
                "b_to_agent": e.frames_to_agent,
                "b_to_twilio": e.frames_to_twilio,
                "b_dropped": _json(e.dropped),
                "b_resumes": e.resumes,
            }
            for e in closed
        ],
    )
    # A stub made by a status callback racing this call's CallOpened on another instance.
    opened_sids = select(calls.c.call_sid).where(
        calls.c.call_id.in_([e.call_id for e in closed]),
        calls.c.opened == true(),
        calls.c.call_sid.is_not(None),
    )
    sids = [sid for sid in (await conn.execute(opened_sids)).scalars() if sid]
    if sids:
        await _drop_stubs(conn, sids)


async def _apply_statuses(conn: AsyncConnection, statuses: Sequence[CallStatusChanged]) -> None:
    # One statement per step for the whole batch (executemany), not four per CallSid. Each
    # step touches only the rows of its own CallSid, so running every CallSid's first step,
    # then every one's second... ends where CallSid after CallSid would.
    latest: dict[str, CallStatusChanged] = {}
    by_sid: dict[str, list[CallStatusChanged]] = {}
    for s in statuses:
        best = latest.get(s.call_sid)
        if best is None or _rank(s) > _rank(best):
            latest[s.call_sid] = s
        by_sid.setdefault(s.call_sid, []).append(s)

    # The webhook knew our call id: link the row if it had no CallSid yet.
    links = [{"b_call_id": s.call_id, "b_sid": s.call_sid} for s in latest.values() if s.call_id]
    if links:
        await conn.execute(_LINK_SID, links)

    # A call no row knows of yet (never streamed here, or not yet): a stub, keyed by sid.
    await conn.execute(
        _insert(conn, calls).from_select(_STUB_COLUMNS, _STUB_ROW).on_conflict_do_nothing(),
        [
            {
                "b_sid": s.call_sid,
                "b_direction": twilio_direction(s.direction),
                "b_from": _text(s.from_number),
                "b_to": _text(s.to_number),
                "b_at": utc(s.at),
            }
            for s in latest.values()
        ],
    )

    # A stub takes what any of its callbacks says, and starts at the earliest of them.
    await conn.execute(
        _COMPLETE_STUB,
        [
            {
                "b_sid": sid,
                "b_earliest": min(utc(o.at) for o in same),
                "b_direction": _first(twilio_direction(o.direction) for o in same),
                "b_from": _first(_text(o.from_number) for o in same),
                "b_to": _first(_text(o.to_number) for o in same),
            }
            for sid, same in by_sid.items()
        ],
    )

    # The latest status, moved forward only.
    rows = []
    for s in latest.values():
        sequence, at = _rank(s)
        rows.append({"b_sid": s.call_sid, "b_status": s.status, "b_sequence": sequence, "b_at": at})
    await conn.execute(_ADVANCE_STATUS, rows)


_LINK_SID = (
    update(calls)
    .where(calls.c.call_id == bindparam("b_call_id"), calls.c.call_sid.is_(None))
    .values(call_sid=bindparam("b_sid"))
)
_STUB_COLUMNS = [
    "call_id",
    "call_sid",
    "direction",
    "from_number",
    "to_number",
    "started_at",
    "opened",
]
_STUB_ROW = select(
    bindparam("b_sid", type_=calls.c.call_id.type).label("call_id"),
    bindparam("b_sid", type_=calls.c.call_sid.type).label("call_sid"),
    bindparam("b_direction", type_=calls.c.direction.type).label("direction"),
    bindparam("b_from", type_=calls.c.from_number.type).label("from_number"),
    bindparam("b_to", type_=calls.c.to_number.type).label("to_number"),
    bindparam("b_at", type_=calls.c.started_at.type).label("started_at"),
    literal(False).label("opened"),
).where(~exists().where(calls.c.call_sid == bindparam("b_sid")))
_EARLIEST = bindparam("b_earliest", type_=calls.c.started_at.type)
_COMPLETE_STUB = (
    update(calls)
    .where(calls.c.call_sid == bindparam("b_sid"), calls.c.opened == false())
    .values(
        started_at=case((calls.c.started_at > _EARLIEST, _EARLIEST), else_=calls.c.started_at),
        direction=func.coalesce(
            calls.c.direction, bindparam("b_direction", type_=calls.c.direction.type)
        ),
        from_number=func.coalesce(
            calls.c.from_number, bindparam("b_from", type_=calls.c.from_number.type)
        ),
        to_number=func.coalesce(calls.c.to_number, bindparam("b_to", type_=calls.c.to_number.type)),
    )
)
_ADVANCE_STATUS = (
    update(calls)
    .where(
        calls.c.call_sid == bindparam("b_sid"),
        or_(
            calls.c.twilio_status_sequence.is_(None),
            calls.c.twilio_status_sequence < bindparam("b_sequence"),
            and_(
                calls.c.twilio_status_sequence == bindparam("b_sequence"),
                calls.c.twilio_status_at < bindparam("b_at", type_=calls.c.twilio_status_at.type),
            ),
        ),
    )
    .values(
        twilio_status=bindparam("b_status"),
        twilio_status_sequence=bindparam("b_sequence"),
        twilio_status_at=bindparam("b_at", type_=calls.c.twilio_status_at.type),
    )
)


def _first(values: Iterable[str | None]) -> str | None:
    return next((v for v in values if v), None)


def _rank(s: CallStatusChanged) -> tuple[int, datetime.datetime]:
    return (NO_SEQUENCE if s.sequence is None else s.sequence), utc(s.at)


async def _refresh_statuses(conn: AsyncConnection, call_ids: Sequence[str]) -> None:
    """Take the latest status from the callbacks table (they may have come first)."""
    latest = (
        select(call_statuses)
        .where(call_statuses.c.call_sid == calls.c.call_sid)
        .order_by(call_statuses.c.sequence.desc(), call_statuses.c.at.desc())
        .limit(1)
    )
    await conn.execute(
        update(calls)
        .where(
            calls.c.call_id.in_(list(call_ids)),
            exists().where(call_statuses.c.call_sid == calls.c.call_sid),
        )
        .values(
            twilio_status=latest.with_only_columns(call_statuses.c.status).scalar_subquery(),
            twilio_status_sequence=latest.with_only_columns(
                call_statuses.c.sequence
            ).scalar_subquery(),
            twilio_status_at=latest.with_only_columns(call_statuses.c.at).scalar_subquery(),
        )
    )


async def close_interrupted(
    conn: AsyncConnection, instance_id: str, live: Collection[str]
) -> list[str]:
    """Close the calls this instance left open when it last stopped (except those in `live`),
    as ended by "restart" at the time of their last entry. Returns their ids."""
    rows = await conn.execute(
        select(calls.c.call_id, calls.c.started_at).where(
            calls.c.instance_id == instance_id,
            calls.c.ended_at.is_(None),
            calls.c.opened == true(),
        )
    )
    closed = []
    for call_id, started_at in rows.all():
        if call_id in live:
            continue
        ended_at = started_at
        for table in CALL_CHILD_TABLES:
            last = (
                await conn.execute(select(func.max(table.c.at)).where(table.c.call_id == call_id))
            ).scalar()
            if last is not None and last > ended_at:
                ended_at = last
        await conn.execute(
            update(calls)
            .where(calls.c.call_id == call_id, calls.c.ended_at.is_(None))
            .values(ended_at=ended_at, ended_by=RESTART_ENDED_BY, end_reason=RESTART_REASON)
        )
        closed.append(call_id)
    return closed


async def purge_before(conn: AsyncConnection, cutoff: datetime.datetime) -> int:
    """Delete calls that ended (or, never closed, started) before `cutoff`, with everything
    recorded about them; returns how many calls."""
    expired = func.coalesce(calls.c.ended_at, calls.c.started_at) < literal(
        cutoff, calls.c.started_at.type
    )
    doomed_ids = select(calls.c.call_id).where(expired)
    doomed_sids = select(calls.c.call_sid).where(expired, calls.c.call_sid.is_not(None))
    await conn.execute(delete(call_statuses).where(call_statuses.c.call_sid.in_(doomed_sids)))
    for table in CALL_CHILD_TABLES:
        await conn.execute(delete(table).where(table.c.call_id.in_(doomed_ids)))
    result = await conn.execute(delete(calls).where(expired))
    # Callbacks whose call row is gone or never existed.
    await conn.execute(
        delete(call_statuses).where(
            call_statuses.c.at < literal(cutoff, call_statuses.c.at.type),
            ~exists().where(calls.c.call_sid == call_statuses.c.call_sid),
        )
    )
    return int(result.rowcount)
