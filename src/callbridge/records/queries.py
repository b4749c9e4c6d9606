"""Reading call records back: a filtered, paged list of calls, and one call in full.

The shapes here are the API's (`openapi.yaml`, schemas CallPage, CallSummary, CallDetail) and
`callbridge calls ... --json`'s: msgspec structs, encoded as JSON as they are.

A call's `status` is Twilio's latest status callback when it is final (completed, busy,
failed, no-answer, canceled); otherwise "completed" once the call's record is closed, else
Twilio's latest non-final status, else "in-progress". So `--status` works with or without
status callbacks configured.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    case,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from callbridge.records.tables import (
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

STATUSES = (
    "queued",
    "initiated",
    "ringing",
    "in-progress",
    "completed",
    "busy",
    "failed",
    "no-answer",
    "canceled",
)
FINAL_STATUSES = ("completed", "busy", "failed", "no-answer", "canceled")
DIRECTIONS = ("inbound", "outbound")
ENDED_BY = ("caller", "agent", "bridge", "server", "restart", "operator")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CallSummary(msgspec.Struct, kw_only=True):
    call_id: str
    call_sid: str | None
    direction: str | None
    from_number: str | None
    to_number: str | None
    status: str
    started_at: datetime.datetime
    answered_at: datetime.datetime | None
    ended_at: datetime.datetime | None
    duration_seconds: float | None
    ended_by: str | None
    end_reason: str | None


class CallPage(msgspec.Struct, kw_only=True):
    calls: list[CallSummary]
    next_cursor: str | None


class StatusChange(msgspec.Struct, kw_only=True):
    status: str
    at: datetime.datetime
    sequence: int | None
    duration_seconds: int | None


class AgentSession(msgspec.Struct, kw_only=True):
    seq: int
    session_id: str
    at: datetime.datetime
    offset_seconds: float
    resumed: bool


class TranscriptItem(msgspec.Struct, kw_only=True):
    seq: int
    at: datetime.datetime
    offset_seconds: float
    role: str
    text: str | None  # None: not stored (STORE_TRANSCRIPTS=false)
    reply_id: str | None
    interrupted: bool
    generated_seconds: float | None
    heard_seconds: float | None


class ToolCallItem(msgspec.Struct, kw_only=True):
    seq: int
    at: datetime.datetime
    offset_seconds: float
    tool_call_id: str
    name: str
    arguments: dict[str, Any] | None
    result: str | None
    is_error: bool
    duration_ms: float | None
    discarded: bool


class TurnLatencyItem(msgspec.Struct, kw_only=True):
    seq: int
    at: datetime.datetime
    offset_seconds: float
    reply_id: str | None
    to_first_audio_sent_ms: float | None
    to_first_audio_played_ms: float | None
    to_first_audible_sent_ms: float | None
    to_first_audible_played_ms: float | None


class ErrorItem(msgspec.Struct, kw_only=True):
    seq: int
    at: datetime.datetime
    offset_seconds: float
    source: str
    code: str
    message: str


class ActionItem(msgspec.Struct, kw_only=True):
    seq: int
    at: datetime.datetime
    offset_seconds: float
    verb: str
    by: str | None
    outcome: str
    detail: str
    target: str | None
    started_at: datetime.datetime | None


def describe_action(act: ActionItem) -> str:
    """`transfer to sales by agent: busy`, `say by operator: refused (the call is ending)`:
    the verb, its target, who asked for it, what it came to and its detail, each if known."""
    target = f" to {act.target}" if act.target else ""
    by = f" by {act.by}" if act.by else ""
    detail = f" ({act.detail})" if act.detail else ""
    return f"{act.verb}{target}{by}: {act.outcome}{detail}"


class SessionConfigItem(msgspec.Struct, kw_only=True):
    seq: int
    at: datetime.datetime
    offset_seconds: float
    config: dict[str, Any]


class SetupItem(msgspec.Struct, kw_only=True):
    outcome: str  # configured | defaults | refused | forwarded | failed
    detail: str | None
    error: str | None


class AudioCounts(msgspec.Struct, kw_only=True):
    frames_from_twilio: int | None
    frames_to_agent: int | None
    frames_to_twilio: int | None
    dropped: dict[str, int]


class CallDetail(CallSummary, kw_only=True):
    stream_sid: str | None
    instance_id: str | None
    resumes: int
    statuses: list[StatusChange]
    agent_sessions: list[AgentSession]
    transcript: list[TranscriptItem]
    tool_calls: list[ToolCallItem]
    turn_latencies: list[TurnLatencyItem]
    errors: list[ErrorItem]
    actions: list[ActionItem]
    audio: AudioCounts
    bot: str | None
    parameters: dict[str, str | None]
    setup: SetupItem | None
    session_configs: list[SessionConfigItem]


@dataclass(frozen=True, slots=True)
class CallQuery:
    since: datetime.datetime | None = None
    status: str | None = None
    direction: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    until: datetime.datetime | None = None  # started before
    number: str | None = None  # part of the caller's or the called number
    words: str | None = None  # each word said somewhere in the call (any case)
    ended_by: str | None = None


# -- parsing what users type ---------------------------------------------------------------


def parse_since(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """`24h`, `30m`, `7d`, `2w` ago, or a date (`2026-11-01`, midnight UTC) or ISO time
    (UTC unless it says otherwise). ValueError with a message for anything else."""
    value = text.strip()
    now = now or datetime.datetime.now(datetime.UTC)
    match = _RELATIVE.match(value.lower())
    try:
        if match:
            return now - datetime.timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
        if len(value) == 10:
            day = datetime.date.fromisoformat(value)
            return datetime.datetime.combine(day, datetime.time(), datetime.UTC)
        moment = datetime.datetime.fromisoformat(value)
    except (ValueError, OverflowError):  # `99999999999d` overflows datetime
        raise ValueError(
            f"invalid since {text!r}: use a duration such as 24h, 30m, 7d, or a date such as "
            "2026-11-01 (or 2026-11-01T09:30:00Z)"
        ) from None
    return moment.replace(tzinfo=datetime.UTC) if moment.tzinfo is None else moment


def parse_status(text: str) -> str:
    status = text.strip().lower()
    if status not in STATUSES:
        raise ValueError(f"invalid status {text!r}: use one of {', '.join(STATUSES)}")
    return status


def parse_direction(text: str) -> str:
    direction = text.strip().lower()
    if direction not in DIRECTIONS:
        raise ValueError(f"invalid direction {text!r}: use inbound or outbound")
    return direction


def parse_ended_by(text: str) -> str:
    who = text.strip().lower()
    if who not in ENDED_BY:
        raise ValueError(f"invalid ended_by {text!r}: use one of {', '.join(ENDED_BY)}")
    return who


def parse_number(text: str) -> str:
    """The digits (and a leading +) of a phone number or a part of one."""
    value = text.strip()
    number = ("+" if value.startswith("+") else "") + re.sub(r"\D", "", value)
    if not number.lstrip("+"):
        raise ValueError(f"invalid number {text!r}: give some of its digits")
    return number


def parse_limit(value: int, maximum: int = MAX_LIMIT) -> int:
    if not 1 <= value <= maximum:
        raise ValueError(f"invalid limit {value}: use 1 to {maximum}")
    return value


def _encode_cursor(started_at: datetime.datetime, call_id: str) -> str:
    raw = msgspec.json.encode([started_at.isoformat(), call_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started, call_id = msgspec.json.decode(raw, type=tuple[str, str])
        moment = datetime.datetime.fromisoformat(started)
    except (binascii.Error, msgspec.DecodeError, msgspec.ValidationError, ValueError):
        raise ValueError("invalid cursor: pass back the next_cursor of a previous page") from None
    if moment.tzinfo is None:
        raise ValueError("invalid cursor: pass back the next_cursor of a previous page")
    return moment, call_id


# -- the queries ---------------------------------------------------------------------------


def _status_expr() -> ColumnElement[str]:
    return case(
        (calls.c.twilio_status.in_(FINAL_STATUSES), calls.c.twilio_status),
        (calls.c.ended_at.is_not(None), literal("completed")),
        (calls.c.twilio_status.is_not(None), calls.c.twilio_status),
        else_=literal("in-progress"),
    )


def _answered_expr() -> ColumnElement[datetime.datetime]:
    # The first in-progress callback; without one, the stream's start (Twilio connects the
    # stream only once the call is answered).
    first_in_progress = (
        select(func.min(call_statuses.c.at))
        .where(call_statuses.c.call_sid == calls.c.call_sid)
        .where(call_statuses.c.status == "in-progress")
        .scalar_subquery()
    )
    return func.coalesce(
        first_in_progress, case((calls.c.opened == true(), calls.c.started_at), else_=None)
    )


def _not_superseded() -> ColumnElement[bool]:
    # Hide a status-only stub once the call's own row exists (a race the writer also heals).
    real = calls.alias("real")
    return ~and_(
        calls.c.opened == false(),
        calls.c.call_id == calls.c.call_sid,
        exists().where(real.c.call_sid == calls.c.call_sid, real.c.opened == true()),
    )


def _summary_columns() -> list[Any]:
    return [
        calls,
        _status_expr().label("status"),
        _answered_expr().label("answered_at"),
    ]


async def list_calls(conn: AsyncConnection, query: CallQuery) -> CallPage:
    stmt = select(*_summary_columns()).where(_not_superseded())
    if query.since is not None:
        stmt = stmt.where(calls.c.started_at >= literal(query.since, calls.c.started_at.type))
    if query.status is not None:
        stmt = stmt.where(_status_expr() == query.status)
    if query.direction is not None:
        stmt = stmt.where(calls.c.direction == query.direction)
    if query.until is not None:
        stmt = stmt.where(calls.c.started_at < literal(query.until, calls.c.started_at.type))
    if query.ended_by is not None:
        stmt = stmt.where(calls.c.ended_by == query.ended_by)
    if query.number:
        pattern = f"%{_like_escape(query.number)}%"
        stmt = stmt.where(
            or_(
                calls.c.from_number.like(pattern, escape="\\"),
                calls.c.to_number.like(pattern, escape="\\"),
            )
        )
    for word in (query.words or "").split():
        said = func.lower(transcript_entries.c.text).like(
            f"%{_like_escape(word.lower())}%", escape="\\"
        )
        stmt = stmt.where(exists().where(transcript_entries.c.call_id == calls.c.call_id, said))
    if query.cursor is not None:
        started_at, call_id = _decode_cursor(query.cursor)
        at = literal(started_at, calls.c.started_at.type)
        stmt = stmt.where(
            or_(calls.c.started_at < at, and_(calls.c.started_at == at, calls.c.call_id < call_id))
        )
    stmt = stmt.order_by(calls.c.started_at.desc(), calls.c.call_id.desc()).limit(query.limit + 1)
    rows = (await conn.execute(stmt)).all()
    page = [_summary(row) for row in rows[: query.limit]]
    next_cursor = None
    if len(rows) > query.limit:
        last = page[-1]
        next_cursor = _encode_cursor(last.started_at, last.call_id)
    return CallPage(calls=page, next_cursor=next_cursor)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _summary(row: Row[Any]) -> CallSummary:
    m = row._mapping
    ended_at = m["ended_at"]
    if ended_at is None and m["twilio_status"] in FINAL_STATUSES:
        ended_at = m["twilio_status_at"]
    started_at = m["started_at"]
    return CallSummary(
        call_id=m["call_id"],
        call_sid=m["call_sid"],
        direction=m["direction"],
        from_number=m["from_number"],
        to_number=m["to_number"],
        status=m["status"],
        started_at=started_at,
        answered_at=_as_utc(m["answered_at"]),
        ended_at=ended_at,
        duration_seconds=_seconds(ended_at - started_at) if ended_at is not None else None,
        ended_by=m["ended_by"],
        end_reason=m["end_reason"],
    )


def _as_utc(value: Any) -> datetime.datetime | None:
    # Expressions (coalesce of a subquery) come back from SQLite as text or naive datetimes.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    assert isinstance(value, datetime.datetime)
    return value.replace(tzinfo=datetime.UTC) if value.tzinfo is None else value


def _seconds(delta: datetime.timedelta) -> float:
    return round(delta.total_seconds(), 3)


async def get_call(conn: AsyncConnection, key: str) -> CallDetail | None:
    """The call whose id, or else whose Twilio CallSid, is `key`; None if there is none."""
    row = (
        await conn.execute(
            select(*_summary_columns())
            .where(or_(calls.c.call_id == key, calls.c.call_sid == key))
            # Our own row before a stub; the latest call if Twilio reused a sid.
            .order_by(
                (calls.c.call_id == key).desc(),
                calls.c.opened.desc(),
                calls.c.started_at.desc(),
            )
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    summary = _summary(row)
    m = row._mapping
    call_id = summary.call_id
    start = summary.started_at

    def offset(at: datetime.datetime) -> float:
        return _seconds(at - start)

    statuses: list[StatusChange] = []
    if summary.call_sid:
        for s in await _rows(
            conn,
            select(call_statuses)
            .where(call_statuses.c.call_sid == summary.call_sid)
            .order_by(call_statuses.c.sequence, call_statuses.c.at),
        ):
            statuses.append(
                StatusChange(
                    status=s["status"],
                    at=s["at"],
                    sequence=None if s["sequence"] == NO_SEQUENCE else s["sequence"],
                    duration_seconds=s["duration_seconds"],
                )
            )
    sessions = await _items(conn, agent_sessions, AgentSession, call_id, offset)
    transcript = await _items(conn, transcript_entries, TranscriptItem, call_id, offset)
    tools = await _items(conn, tool_calls, ToolCallItem, call_id, offset)
    latencies = await _items(conn, turn_latencies, TurnLatencyItem, call_id, offset)
    errors = await _items(conn, call_errors, ErrorItem, call_id, offset)
    actions = await _items(conn, call_actions, ActionItem, call_id, offset)
    configs = await _items(conn, session_configs, SessionConfigItem, call_id, offset)
    outcome = m["setup_outcome"]
    setup = (
        SetupItem(outcome=outcome, detail=m["setup_detail"], error=m["setup_error"])
        if outcome is not None
        else None
    )
    resumed_sessions = sum(1 for s in sessions if s.resumed)
    return CallDetail(
        **{f: getattr(summary, f) for f in CallSummary.__struct_fields__},
        stream_sid=m["stream_sid"],
        instance_id=m["instance_id"],
        resumes=max(m["resumes"], resumed_sessions),
        statuses=statuses,
        agent_sessions=sessions,
        transcript=transcript,
        tool_calls=tools,
        turn_latencies=latencies,
        errors=errors,
        actions=actions,
        audio=AudioCounts(
            frames_from_twilio=m["frames_from_twilio"],
            frames_to_agent=m["frames_to_agent"],
            frames_to_twilio=m["frames_to_twilio"],
            dropped=dict(m["dropped_frames"] or {}),
        ),
        bot=m["bot_name"],
        parameters=dict(m["parameters"] or {}),
        setup=setup,
        session_configs=configs,
    )


async def _rows(conn: AsyncConnection, stmt: Any) -> list[Any]:
    return [row._mapping for row in (await conn.execute(stmt)).all()]


_Item = TypeVar("_Item", bound=msgspec.Struct)


async def _items(
    conn: AsyncConnection,
    table: Any,
    item: type[_Item],
    call_id: str,
    offset: Callable[[datetime.datetime], float],
) -> list[_Item]:
    """One list of a call's detail: each row as `item`, whose fields are the table's
    columns, plus how far into the call it happened."""
    fields = [f for f in item.__struct_fields__ if f != "offset_seconds"]
    return [
        item(**{f: row[f] for f in fields}, offset_seconds=offset(row["at"]))
        for row in await _entries(conn, table, call_id)
    ]


async def _entries(conn: AsyncConnection, table: Any, call_id: str) -> list[Any]:
    return await _rows(conn, select(table).where(table.c.call_id == call_id).order_by(table.c.seq))


class Overview(msgspec.Struct, kw_only=True):
    """What the console's overview charts are drawn from, since a moment: each call's start,
    status and who ended it; each turn's latency to its first audible audio as played (else
    to its first audio); and when the agent side failed."""

    calls: list[tuple[datetime.datetime, str, str | None]]
    turn_latencies: list[tuple[datetime.datetime, float]]
    agent_errors: list[datetime.datetime]


OVERVIEW_MAX_ROWS = 100_000  # of each kind: a chart of a busy day, not an unbounded read


async def overview(conn: AsyncConnection, since: datetime.datetime) -> Overview:
    after = literal(since, calls.c.started_at.type)
    call_rows = await conn.execute(
        select(calls.c.started_at, _status_expr(), calls.c.ended_by)
        .where(_not_superseded(), calls.c.started_at >= after)
        .order_by(calls.c.started_at)
        .limit(OVERVIEW_MAX_ROWS)
    )
    latency = func.coalesce(
        turn_latencies.c.to_first_audible_played_ms, turn_latencies.c.to_first_audio_played_ms
    )
    latency_rows = await conn.execute(
        select(turn_latencies.c.at, latency)
        .where(turn_latencies.c.at >= after, latency.is_not(None))
        .order_by(turn_latencies.c.at)
        .limit(OVERVIEW_MAX_ROWS)
    )
    error_rows = await conn.execute(
        select(call_errors.c.at)
        .where(call_errors.c.at >= after, call_errors.c.source == "agent")
        .order_by(call_errors.c.at)
        .limit(OVERVIEW_MAX_ROWS)
    )
    return Overview(
        calls=[(at, str(status), ended_by) for at, status, ended_by in call_rows.all()],
        turn_latencies=[(at, float(ms)) for at, ms in latency_rows.all()],
        agent_errors=[at for (at,) in error_rows.all()],
    )
