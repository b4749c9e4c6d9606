"""`callbridge calls list|show` and `callbridge db upgrade`: call records from the shell.

They read DATABASE_URL directly (not through a running server, and never its spool), so they
work while the server runs and while it does not. Usage errors exit 2, a missing call or an
unreachable or unprepared database exits 1, each with one line on stderr.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from callbridge.cli.exit import EXIT_CONFIG, EXIT_FAILED, fail, settings_or_exit
from callbridge.config import Settings
from callbridge.records import database, queries
from callbridge.records.queries import CallDetail, CallQuery, CallSummary

calls_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Read the records of calls, and hang up or speak on a live one.",
)
db_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The call records database.")


@db_app.callback()
def _db() -> None:
    """The call records database."""  # a group even with one command: `db upgrade`


_T = TypeVar("_T")


class _Failure(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _run(settings: Settings, work: Callable[[AsyncEngine], Awaitable[_T]]) -> _T:
    try:
        return asyncio.run(_with_engine(settings.database_url, work))
    except ValueError as exc:  # DATABASE_URL
        fail(f"configuration error: {exc}", EXIT_CONFIG)
    except _Failure as exc:
        fail(str(exc), exc.code)


async def _with_engine(url: str, work: Callable[[AsyncEngine], Awaitable[_T]]) -> _T:
    engine = database.create_engine(url)
    try:
        return await work(engine)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise _Failure(f"cannot read {database.redacted(url)}: {_reason(exc)}") from None
    finally:
        await engine.dispose()


async def _check_schema(engine: AsyncEngine, url: str) -> None:
    """Refuse to read a database the server has not prepared (and never create one)."""
    path = database.sqlite_path(url)
    if path is not None and not path.exists():
        raise _Failure(
            f"no call records at {path} (DATABASE_URL): the server creates the database "
            "when it starts, or run `callbridge db upgrade`"
        )
    async with asyncio.timeout(15):
        revision = await database.current_revision(engine)
    head = database.head_revision()
    if revision is None:
        raise _Failure(
            f"{database.redacted(url)} has no call records tables yet: "
            "run `callbridge db upgrade` (the server also does at start)"
        )
    if revision != head:
        raise _Failure(
            f"{database.redacted(url)} is at schema revision {revision}, this callbridge "
            f"reads {head}: run `callbridge db upgrade`"
        )


def _reason(exc: BaseException) -> str:
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    text = str(orig).strip().splitlines()
    return text[0][:200] if text else type(orig).__name__


# -- calls list ----------------------------------------------------------------------------


@calls_app.command("list")
def list_calls(
    since: Annotated[
        str | None,
        typer.Option(help="Only calls started since: a duration (24h, 30m, 7d) or a date."),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(help="Only calls with this status (completed, busy, in-progress, ...)."),
    ] = None,
    direction: Annotated[
        str | None, typer.Option(help="Only inbound or only outbound calls.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many calls, newest first.")] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="JSON: a list of calls.")] = False,
) -> None:
    """List calls, newest first."""
    try:
        query = CallQuery(
            since=queries.parse_since(since) if since is not None else None,
            status=queries.parse_status(status) if status is not None else None,
            direction=queries.parse_direction(direction) if direction is not None else None,
            limit=queries.parse_limit(limit, maximum=100_000),
        )
    except ValueError as exc:
        fail(str(exc), EXIT_CONFIG)
    settings = settings_or_exit()

    async def work(engine: AsyncEngine) -> list[CallSummary]:
        await _check_schema(engine, settings.database_url)
        async with engine.connect() as conn:
            return (await queries.list_calls(conn, query)).calls

    found = _run(settings, work)
    if json_output:
        _print_json(found)
    elif not found:
        typer.echo("No calls.")
    else:
        typer.echo(render_list(found))


def render_list(found: list[CallSummary]) -> str:
    header = (
        "STARTED (UTC)",
        "CALL",
        "CALL SID",
        "DIR",
        "FROM",
        "TO",
        "STATUS",
        "LENGTH",
        "ENDED BY",
    )
    rows: list[tuple[str, ...]] = [header]
    for call in found:
        rows.append(
            (
                call.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                call.call_id,
                call.call_sid or "-",
                call.direction or "-",
                call.from_number or "-",
                call.to_number or "-",
                call.status,
                f"{call.duration_seconds:.1f}s" if call.duration_seconds is not None else "-",
                call.ended_by or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


# -- calls show ----------------------------------------------------------------------------


# Call ids are URL-safe base64, and older ones can start with '-': taken as the call, not
# as an unknown option.
@calls_app.command("show", context_settings={"ignore_unknown_options": True})
def show_call(
    call: Annotated[str, typer.Argument(help="Our call id, or Twilio's CallSid.")],
    json_output: Annotated[bool, typer.Option("--json", help="JSON: the whole record.")] = False,
) -> None:
    """Show one call: the conversation with timings, tool calls, what was interrupted."""
    settings = settings_or_exit()

    async def work(engine: AsyncEngine) -> CallDetail | None:
        await _check_schema(engine, settings.database_url)
        async with engine.connect() as conn:
            return await queries.get_call(conn, call.strip())

    detail = _run(settings, work)
    if detail is None:
        fail(f"no call with id or CallSid {call!r}", EXIT_FAILED)
    if json_output:
        _print_json(detail)
    else:
        typer.echo(render_call(detail))


def render_call(call: CallDetail) -> str:
    """The call as readable lines; times are offsets from the call's start."""
    lines = [
        f"Call {call.call_id}  {call.direction or 'unknown direction'}  "
        f"{call.from_number or '?'} -> {call.to_number or '?'}  [{call.status}]",
        f"  CallSid {call.call_sid or '-'}  StreamSid {call.stream_sid or '-'}  "
        f"instance {call.instance_id or '-'}",
    ]
    when = f"  Started {call.started_at.isoformat(timespec='milliseconds')}"
    if call.answered_at is not None:
        when += f", answered {_offset((call.answered_at - call.started_at).total_seconds())}"
    if call.ended_at is not None and call.duration_seconds is not None:
        when += f", ended {_offset(call.duration_seconds)}"
        if call.ended_by:
            when += f" by {call.ended_by}"
        if call.end_reason:
            when += f" ({call.end_reason})"
    else:
        when += ", not ended"
    lines.append(when)
    lines.extend(_setup_lines(call))
    if call.statuses:
        timeline = ", ".join(
            f"{s.status} {_offset((s.at - call.started_at).total_seconds()).strip()}"
            + (f" ({s.duration_seconds} s billed)" if s.duration_seconds is not None else "")
            for s in call.statuses
        )
        lines.append(f"  Twilio: {timeline}")
    if call.agent_sessions:
        sessions = ", ".join(
            f"{s.session_id}{' (resumed)' if s.resumed else ''}" for s in call.agent_sessions
        )
        lines.append(f"  Agent sessions: {sessions}; resumes: {call.resumes}")
    audio = call.audio
    if audio.frames_from_twilio is not None:
        dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(audio.dropped.items()))
        lines.append(
            f"  Audio frames: {audio.frames_from_twilio} from Twilio, {audio.frames_to_agent} "
            f"to the agent, {audio.frames_to_twilio} to Twilio; dropped: {dropped or 'none'}"
        )
    events: list[tuple[int, str]] = []
    for s in call.agent_sessions:
        verb = "resumed" if s.resumed else "started"
        events.append((s.seq, f"{_offset(s.offset_seconds)}  session {verb} {s.session_id}"))
    for t in call.transcript:
        events.append((t.seq, f"{_offset(t.offset_seconds)}  {t.role:<7} {_words(t)}"))
    for tool in call.tool_calls:
        events.append((tool.seq, f"{_offset(tool.offset_seconds)}  tool    {_tool(tool)}"))
    for lat in call.turn_latencies:
        events.append((lat.seq, f"{_offset(lat.offset_seconds)}  latency {_latency(lat)}"))
    for c in call.session_configs:
        events.append((c.seq, f"{_offset(c.offset_seconds)}  config  {_config(c.config)}"))
    for err in call.errors:
        message = f": {err.message}" if err.message else ""
        events.append(
            (err.seq, f"{_offset(err.offset_seconds)}  error   {err.source} {err.code}{message}")
        )
    for act in call.actions:
        line = f"{_offset(act.offset_seconds)}  action  {queries.describe_action(act)}"
        events.append((act.seq, line))
    if events:
        lines.append("")
        lines.extend(line for _, line in sorted(events, key=lambda e: e[0]))
    return "\n".join(lines)


def _setup_lines(call: CallDetail) -> list[str]:
    """The bot, what its set-up decided, and the custom parameters."""
    lines = []
    if call.bot is not None or call.setup is not None:
        line = f"  Bot {call.bot or '-'}"
        setup = call.setup
        if setup is not None:
            line += f"; set-up: {setup.outcome}"
            if setup.detail:
                line += f" ({setup.detail})"
            if setup.error:
                line += f": {setup.error}"
        lines.append(line)
    if call.parameters:
        shown = ", ".join(
            f"{name}={value if value is not None else '(not stored)'}"
            for name, value in sorted(call.parameters.items())
        )
        lines.append(f"  Parameters: {shown}")
    return lines


def _config(config: dict[str, Any]) -> str:
    """The confirmed configuration in one line: what a reader checks first."""
    parts = []
    output = config.get("output")
    if isinstance(output, dict) and output.get("voice"):
        parts.append(f"voice {output['voice']}")
    tools = config.get("tools")
    if isinstance(tools, list):
        names = [t.get("name") for t in tools if isinstance(t, dict)]
        parts.append(f"tools {', '.join(str(n) for n in names) or 'none'}")
    prompt = config.get("system_prompt")
    if isinstance(prompt, str):
        parts.append(f"prompt {prompt[:60]!r}{'...' if len(prompt) > 60 else ''}")
    elif "system_prompt" in config:
        parts.append("prompt (not stored)")
    inputs = config.get("input")
    if isinstance(inputs, dict) and isinstance(inputs.get("keyterms"), list):
        parts.append(f"keyterms {len(inputs['keyterms'])}")
    return "; ".join(parts) or "(empty)"


def _offset(seconds: float) -> str:
    return f"{seconds:+8.2f}s"


def _latency(lat: queries.TurnLatencyItem) -> str:
    """`first words sent 1020 ms, played 1100 ms (first audio sent 0 ms, played 80 ms)
    after the caller stopped`: the wait the caller heard first, the reply's silent
    lead-in in brackets; either part alone when the other was not measured."""
    words = (lat.to_first_audible_sent_ms, lat.to_first_audible_played_ms)
    audio = (lat.to_first_audio_sent_ms, lat.to_first_audio_played_ms)
    parts = [
        f"{what} sent {_ms(sent)}, played {_ms(played)}"
        for what, (sent, played) in (("first words", words), ("first audio", audio))
        if sent is not None or played is not None
    ]
    if len(parts) == 2:
        parts = [f"{parts[0]} ({parts[1]})"]
    return f"{parts[0] if parts else 'first audio -'} after the caller stopped"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _words(t: queries.TranscriptItem) -> str:
    text = t.text if t.text is not None else "(words not stored)"
    if t.role != "agent":
        return text
    heard = f"{t.heard_seconds:.2f}s" if t.heard_seconds is not None else "?"
    generated = f"{t.generated_seconds:.2f}s" if t.generated_seconds is not None else "?"
    if t.interrupted:
        return f"{text}  [interrupted: heard {heard} of {generated}]"
    if t.heard_seconds is None and t.generated_seconds is None:
        return text
    return f"{text}  [heard {heard} of {generated}]"


def _tool(tool: queries.ToolCallItem) -> str:
    if tool.arguments is None:
        call = f"{tool.name}(arguments not stored)"
    else:
        call = f"{tool.name}({msgspec.json.encode(tool.arguments).decode()})"
    if tool.result is None:
        outcome = "no result" if tool.arguments is not None else "result not stored"
    elif tool.is_error:
        outcome = f"error: {tool.result}"
    else:
        outcome = tool.result
    line = f"{call} -> {outcome}"
    if tool.duration_ms is not None:
        line += f"  ({tool.duration_ms:.0f} ms)"
    if tool.discarded:
        line += "  [discarded: its reply was interrupted]"
    return line


def _print_json(value: object) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


# -- db upgrade ----------------------------------------------------------------------------


@db_app.command("upgrade")
def upgrade(
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it (for DBAs).")
    ] = False,
) -> None:
    """Create or migrate the call records tables in DATABASE_URL (the server also does this
    when it starts)."""
    settings = settings_or_exit()
    if sql:
        try:
            database.upgrade_sql(settings.database_url, sys.stdout)
        except ValueError as exc:
            fail(f"configuration error: {exc}", EXIT_CONFIG)
        return

    async def work(engine: AsyncEngine) -> str:
        async with asyncio.timeout(60):
            return await database.upgrade(engine)

    revision = _run(settings, work)
    typer.echo(f"{database.redacted(settings.database_url)} is at schema revision {revision}")
