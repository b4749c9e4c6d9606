"""The console's routes: log-in and out, the live page and its feed, history and export, one
call, the overview, and actions on a live call."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import functools
import io
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from importlib import resources
from typing import Any

import jinja2
import msgspec
from aiohttp import web
from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError

from callbridge.console import actions, charts, views
from callbridge.console.auth import (
    COOKIE,
    LoginThrottle,
    Session,
    Sessions,
    cookie_options,
    cross_site,
    token_matches,
)
from callbridge.console.feed import Line, LiveCall, LiveFeed, Subscription
from callbridge.logs import EventLogger
from callbridge.records import queries
from callbridge.records.entries import ToolInvocation
from callbridge.records.queries import CallQuery, CallSummary
from callbridge.server.log_throttle import refused
from callbridge.server.state import AppState

TICK_SECONDS = 2.0  # how often a live page is told each call's state and the live count
BATCH_SECONDS = 0.25  # a live page's changes are gathered this long, then sent in one write
MAX_WATCHERS = 50  # live pages open at once, all operators together
EXPORT_MAX_CALLS = 10_000
HISTORY_PAGE = 50
STATIC_FILES = {"console.css": "text/css", "live.js": "text/javascript"}
_DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError)
_HEADERS = {
    # Pages show phone numbers and what people said: never cached, never framed.
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; media-src 'self' https:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
_log = EventLogger("console")


@dataclass
class Console:
    state: AppState
    feed: LiveFeed = field(default_factory=LiveFeed)
    sessions: Sessions = field(default_factory=Sessions)
    logins: LoginThrottle = field(default_factory=LoginThrottle)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    templates: jinja2.Environment = field(
        default_factory=lambda: jinja2.Environment(
            loader=jinja2.PackageLoader("callbridge.console", "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    )

    def render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        body = self.templates.get_template(name).render(**context)
        return web.Response(
            status=status, text=body, content_type="text/html", charset="utf-8", headers=_HEADERS
        )


CONSOLE = web.AppKey("callbridge_console", Console)


@dataclass(frozen=True)
class Operator:
    """A request from a logged-in operator."""

    console: Console
    session: Session
    token: str

    @functools.cached_property
    def csrf(self) -> str:
        return self.session.csrf_token(self.token)


def _not_found() -> web.Response:
    return web.Response(status=404, text="Not Found", headers=_HEADERS)


def _token(request: web.Request) -> tuple[Console, str] | None:
    console = request.app.get(CONSOLE)
    token = console.state.api_token if console is not None else None
    if console is None or token is None:
        return None
    return console, token


def _operator(request: web.Request) -> Operator | web.Response:
    """The logged-in operator, else the response: 404 with the console off, else a
    redirect to the log-in page."""
    found = _token(request)
    if found is None:
        return _not_found()
    console, token = found
    session = console.sessions.read(request.cookies.get(COOKIE), token)
    if session is None:
        raise web.HTTPSeeOther("/console/login", headers=_HEADERS)
    return Operator(console, session, token)


async def _action_operator(
    request: web.Request,
) -> tuple[Operator, Mapping[str, str]] | web.Response:
    """A state-changing request: from a logged-in operator, from our own pages, with the
    session's form token."""
    operator = _operator(request)
    if isinstance(operator, web.Response):
        return operator
    why = cross_site(request, operator.console.state.settings.public_url)
    form = await request.post() if why is None else {}
    if why is None and not _same(str(form.get("csrf", "")), operator.csrf):
        why = "missing or wrong form token"
    if why is not None:
        _refused(request, operator.console, why)
        return web.Response(status=403, text=f"Forbidden: {why}", headers=_HEADERS)
    return operator, {k: v for k, v in form.items() if isinstance(v, str)}


def _same(given: str, expected: str) -> bool:
    return bool(given) and token_matches(given, expected)


def _refused(request: web.Request, console: Console, reason: str) -> None:
    refused(
        console.state.refusals,
        _log,
        "console.refused",
        client=request.remote,
        reason=reason,
        path=request.path,
    )


# -- log-in and out -------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.Response:
    found = _token(request)
    if found is None:
        return _not_found()
    console, token = found
    if console.sessions.read(request.cookies.get(COOKIE), token) is not None:
        raise web.HTTPSeeOther("/console", headers=_HEADERS)
    return console.render("login.html", error=None)


async def login(request: web.Request) -> web.Response:
    found = _token(request)
    if found is None:
        return _not_found()
    console, token = found
    client = request.remote or "unknown"
    why = cross_site(request, console.state.settings.public_url)
    if why is not None:
        _refused(request, console, why)
        return web.Response(status=403, text=f"Forbidden: {why}", headers=_HEADERS)
    wait = console.logins.retry_after(client)
    if wait:
        _refused(request, console, "too many failed log-ins")
        error = f"Too many failed log-ins from your address: try again in {wait} s."
        response = console.render("login.html", status=429, error=error)
        response.headers["Retry-After"] = str(wait)
        return response
    form = await request.post()
    given = form.get("token")
    if not isinstance(given, str) or not given or not token_matches(given, token):
        console.logins.failed(client)
        _refused(request, console, "wrong token")
        return console.render("login.html", status=401, error="That is not the token.")
    console.logins.succeeded(client)
    _, cookie = console.sessions.new(token)
    response = web.HTTPSeeOther("/console", headers=_HEADERS)
    response.set_cookie(COOKIE, cookie, **cookie_options(console.state.settings.public_url))  # type: ignore[arg-type]
    _log.info("console.logged_in", client=client)
    raise response


async def logout(request: web.Request) -> web.Response:
    checked = await _action_operator(request)
    if isinstance(checked, web.Response):
        return checked
    operator, _ = checked
    operator.console.sessions.end(operator.session)
    response = web.HTTPSeeOther("/console/login", headers=_HEADERS)
    response.del_cookie(COOKIE, path="/console")
    raise response


# -- live -----------------------------------------------------------------------------------


def _live_context(operator: Operator, shown: bool) -> dict[str, Any]:
    state = operator.console.state
    return {
        "csrf": operator.csrf,
        "shown": shown,
        "live_count": len(state.registry.live),
        "max_calls": state.settings.max_calls,
    }


def _card(operator: Operator, call: LiveCall, shown: bool) -> str:
    state = operator.console.state
    runner = state.registry.live.get(call.call_id)
    bridge_state = runner.bridge.state.value if runner is not None else None
    offered = actions.verbs(runner) if runner is not None else []
    targets = actions.transfer_targets(runner)
    if runner is None and call.holder is not None:  # held by another instance
        bridge_state, offered, targets = "live", actions.offered(call.targets), list(call.targets)
    lines = [_line_html(line) for line in call.lines]
    template = operator.console.templates.get_template("_card.html")
    return template.render(
        call=call,
        csrf=operator.csrf,
        shown=shown,
        state=views.live_state(
            bridge_state,
            closed=call.closed is not None,
            transferring=runner is not None and runner.bridge.transferring,
        ),
        from_number=views.show_number(call.from_number, shown),
        to_number=views.show_number(call.to_number, shown),
        lines=lines,
        verbs=offered if call.closed is None else [],
        targets=targets,
        elapsed=int((call.closed.at if call.closed else time.time()) - call.started_at),
    )


def _line_html(line: Line) -> Markup:
    """One line of a live card's transcript (or a tool the agent called). Built here, not by
    the template, and with plain string formatting: the live feed sends each new line on its
    own, and a card drawn again draws every line it shows."""
    if isinstance(line, ToolInvocation):
        failed = " (error)" if line.is_error else ""
        return Markup(f'<li class="tool"><b>tool</b> <code>{escape(line.name)}</code>{failed}</li>')
    heard, unheard = line.text, ""
    if line.role == "agent":
        heard, unheard = views.split_heard(
            line.text, line.interrupted, line.generated_seconds, line.heard_seconds
        )
    role = escape(line.role)
    html = f'<li class="{role}"><b>{role}</b> <span class="heard">{escape(heard)}</span>'
    if unheard:
        html += (
            ' <del class="unheard" title="not heard: the caller interrupted">'
            f"{escape(unheard)}</del>"
        )
    if line.interrupted:
        html += ' <span class="cut">(interrupted)</span>'
    return Markup(html + "</li>")


async def live_page(request: web.Request) -> web.Response:
    operator = _operator(request)
    if isinstance(operator, web.Response):
        return operator
    shown = request.query.get("numbers") == "shown"
    feed = operator.console.feed
    feed.settle(operator.console.state.registry.live, time.time())
    cards = [
        _card(operator, c, shown) for c in [*feed.calls.values(), *reversed(feed.ended.values())]
    ]
    return operator.console.render(
        "live.html", page="live", cards=cards, **_live_context(operator, shown)
    )


async def live_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `call` (a card's new HTML), `line` (new lines of a card's
    transcript), `tick` (states and the live count), `reload` (the page fell behind and
    changes were dropped, or the session ended)."""
    operator = _operator(request)
    if isinstance(operator, web.Response):
        return operator
    console = operator.console
    if console.feed.watching >= MAX_WATCHERS:
        return web.Response(status=503, text="too many live pages open", headers=_HEADERS)
    shown = request.query.get("numbers") == "shown"
    response = web.StreamResponse(
        headers={**_HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError), console.feed.subscribe() as subscription:
        await response.write(b"retry: 3000\n\n")
        # Every card as it stands now: a change between the page's load and this feed's
        # start (or while it reconnected) is not missed.
        for known in [*console.feed.calls.values(), *console.feed.ended.values()]:
            html = _card(operator, known, shown)
            await _send(response, "call", {"id": known.call_id, "html": html})
        last_tick: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        subscription.ticker = loop.call_later(TICK_SECONDS, _tick_every, loop, subscription)
        try:
            while not console.closing.is_set():
                await subscription.wait()
                if not subscription.ticked_only():
                    # What else changes meanwhile goes in the same write: with many calls,
                    # one wake-up and one write a batch rather than a line.
                    await asyncio.sleep(BATCH_SECONDS)
                if subscription.dropped:
                    await _send(response, "reload", {"dropped": subscription.dropped})
                    break
                batch = []
                for call_id, lines in subscription.take_all().items():
                    if lines is not None:
                        html = "".join(_line_html(line) for line in lines)
                        batch.append(_event("line", {"id": call_id, "html": html}))
                        continue
                    changed = console.feed.find(call_id)
                    if changed is not None:
                        html = _card(operator, changed, shown)
                        batch.append(_event("call", {"id": call_id, "html": html}))
                if subscription.ticked:
                    subscription.ticked = False
                    if not console.sessions.valid(operator.session):
                        batch.append(_event("reload", {}))  # logged out or expired
                        await response.write(b"".join(batch))
                        break
                    tick = _tick(operator)
                    if tick != last_tick:  # nothing new: nothing sent
                        batch.append(_event("tick", tick))
                        last_tick = tick
                if batch:
                    await response.write(b"".join(batch))
        finally:
            if subscription.ticker is not None:
                subscription.ticker.cancel()
    return response


def _tick_every(loop: asyncio.AbstractEventLoop, subscription: Subscription) -> None:
    """Every TICK_SECONDS, a tick in the page's queue (the session checked, states sent)."""
    subscription.tick()
    subscription.ticker = loop.call_later(TICK_SECONDS, _tick_every, loop, subscription)


def _tick(operator: Operator) -> dict[str, Any]:
    state = operator.console.state
    operator.console.feed.settle(state.registry.live, time.time())
    states = {
        call_id: views.live_state(runner.bridge.state.value)
        for call_id, runner in state.registry.live.items()
    }
    return {"live": len(state.registry.live), "max": state.settings.max_calls, "states": states}


def _event(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: ".encode() + msgspec.json.encode(data) + b"\n\n"


async def _send(response: web.StreamResponse, event: str, data: object) -> None:
    await response.write(_event(event, data))


async def act(request: web.Request) -> web.Response:
    checked = await _action_operator(request)
    if isinstance(checked, web.Response):
        return checked
    operator, form = checked
    call_id, verb = request.match_info["call"], request.match_info["verb"]
    try:
        await actions.perform(operator.console.state, call_id, verb, form)
    except actions.ActionRefused as exc:
        return operator.console.render(
            "message.html", status=409, page="live", title="Not done", message=str(exc)
        )
    _log.info("console.action", call_id=call_id, verb=verb, client=request.remote)
    back = "/console?numbers=shown" if form.get("numbers") == "shown" else "/console"
    raise web.HTTPSeeOther(back, headers=_HEADERS)


# -- history --------------------------------------------------------------------------------

_HISTORY_FIELDS = ("number", "words", "since", "until", "status", "direction", "ended_by")


def history_query(params: Mapping[str, str], limit: int, cursor: str | None) -> CallQuery:
    """The history form's fields as a query; ValueError saying which field is wrong."""
    values = {k: params.get(k, "").strip() for k in _HISTORY_FIELDS}
    until = None
    if values["until"]:
        until = queries.parse_since(values["until"])
        if len(values["until"]) == 10:  # a date: up to the end of that day
            until += datetime.timedelta(days=1)
    return CallQuery(
        since=queries.parse_since(values["since"]) if values["since"] else None,
        until=until,
        status=queries.parse_status(values["status"]) if values["status"] else None,
        direction=queries.parse_direction(values["direction"]) if values["direction"] else None,
        ended_by=queries.parse_ended_by(values["ended_by"]) if values["ended_by"] else None,
        number=queries.parse_number(values["number"]) if values["number"] else None,
        words=values["words"][:200] or None,
        limit=limit,
        cursor=cursor,
    )


async def history(request: web.Request) -> web.Response:
    operator = _operator(request)
    if isinstance(operator, web.Response):
        return operator
    console = operator.console
    shown = request.query.get("numbers") == "shown"
    form = {k: request.query.get(k, "") for k in _HISTORY_FIELDS}
    error, page = None, None
    try:
        query = history_query(request.query, HISTORY_PAGE, request.query.get("cursor") or None)
        page = await console.state.records.list_calls(query)
    except ValueError as exc:
        error = str(exc)
    except _DB_ERRORS:
        return _unavailable(console)
    rows = [_row(c, shown) for c in page.calls] if page else []
    params = {k: v for k, v in form.items() if v}
    if shown:
        params["numbers"] = "shown"
    return console.render(
        "history.html",
        page="history",
        csrf=operator.csrf,
        form=form,
        error=error,
        rows=rows,
        shown=shown,
        params=params,
        next_cursor=page.next_cursor if page else None,
        statuses=queries.STATUSES,
        directions=queries.DIRECTIONS,
        ended_bys=queries.ENDED_BY,
    )


def _row(call: CallSummary, shown: bool) -> dict[str, Any]:
    return {
        "call": call,
        "from_number": views.show_number(call.from_number, shown),
        "to_number": views.show_number(call.to_number, shown),
    }


async def export(request: web.Request) -> web.Response:
    """The history's search as a file: every matching call (up to EXPORT_MAX_CALLS), as
    CSV or JSON, with the numbers in full."""
    operator = _operator(request)
    if isinstance(operator, web.Response):
        return operator
    console = operator.console
    form = request.match_info["format"]
    found: list[CallSummary] = []
    cursor = None
    try:
        while len(found) < EXPORT_MAX_CALLS:
            page = await console.state.records.list_calls(
                history_query(request.query, queries.MAX_LIMIT, cursor)
            )
            found.extend(page.calls)
            cursor = page.next_cursor
            if cursor is None:
                break
    except ValueError as exc:
        return web.Response(status=400, text=str(exc), headers=_HEADERS)
    except _DB_ERRORS:
        return _unavailable(console)
    found = found[:EXPORT_MAX_CALLS]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {**_HEADERS, "Content-Disposition": f'attachment; filename="calls-{stamp}.{form}"'}
    if form == "json":
        body = msgspec.json.encode({"calls": found})
        return web.Response(body=body, content_type="application/json", headers=headers)
    out = io.StringIO()
    writer = csv.writer(out)
    fields = CallSummary.__struct_fields__
    writer.writerow(fields)
    for call in found:
        writer.writerow([_csv_cell(getattr(call, f)) for f in fields])
    return web.Response(text=out.getvalue(), content_type="text/csv", headers=headers)


def _csv_cell(value: object) -> object:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    # A spreadsheet runs a cell that starts with one of these as a formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value if not value[1:].replace(" ", "").isdigit() else value
    return "" if value is None else value


# -- one call -------------------------------------------------------------------------------


async def call_page(request: web.Request) -> web.Response:
    operator = _operator(request)
    if isinstance(operator, web.Response):
        return operator
    console = operator.console
    shown = request.query.get("numbers") == "shown"
    try:
        call = await console.state.records.get_call(request.match_info["call"])
    except _DB_ERRORS:
        return _unavailable(console)
    if call is None:
        return console.render(
            "message.html",
            status=404,
            page="history",
            title="No such call",
            message="No call with that id or CallSid.",
        )
    conversation = []
    for t in call.transcript:
        heard, unheard = (t.text or "", "")
        if t.role == "agent":
            heard, unheard = views.split_heard(
                t.text, t.interrupted, t.generated_seconds, t.heard_seconds
            )
        conversation.append({"item": t, "heard": heard, "unheard": unheard})
    tools = [
        {"item": t, "arguments": views.tool_arguments(t), "result": views.tool_result(t)}
        for t in call.tool_calls
    ]
    latencies = views.turn_latencies(call)
    chart = charts.bars(
        {"to first words": [v or 0 for v in latencies]},
        [str(i + 1) for i in range(len(latencies))],
        "Each turn's wait, in milliseconds",
        " ms",
    )
    return console.render(
        "call.html",
        page="history",
        csrf=operator.csrf,
        call=call,
        shown=shown,
        live=call.call_id in console.state.registry.live,
        from_number=views.show_number(call.from_number, shown),
        to_number=views.show_number(call.to_number, shown),
        timeline=views.timeline(call),
        conversation=conversation,
        tools=tools,
        json=lambda v: msgspec.json.encode(v).decode(),
        latency_chart=chart,
        latencies=latencies,
        recording_url=getattr(call, "recording_url", None),
    )


# -- overview -------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    operator = _operator(request)
    if isinstance(operator, web.Response):
        return operator
    console = operator.console
    state = console.state
    now = datetime.datetime.now(datetime.UTC)
    try:
        rows = await state.records.overview(now - datetime.timedelta(hours=24))
    except _DB_ERRORS:
        return _unavailable(console)
    hourly = views.hourly(rows, now)
    labels = [h.strftime("%H:00") for h in hourly.hours]
    live = len(state.registry.live)
    return console.render(
        "overview.html",
        page="overview",
        csrf=operator.csrf,
        live=live,
        max_calls=state.settings.max_calls,
        gauge=charts.gauge(live, state.settings.max_calls, f"{live} of {state.settings.max_calls}"),
        calls_chart=charts.bars(hourly.calls, labels, "Calls per hour by outcome"),
        calls_legend=charts.legend(list(hourly.calls)),
        latency_chart=charts.lines(
            {"median": hourly.latency_median, "95th percentile": hourly.latency_p95},
            labels,
            "Turn latency per hour",
            " ms",
        ),
        latency_legend=charts.legend(["median", "95th percentile"]),
        errors_chart=charts.bars(
            {"agent errors": hourly.agent_errors}, labels, "Agent errors per hour"
        ),
        total_calls=len(rows.calls),
        total_errors=len(rows.agent_errors),
    )


def _unavailable(console: Console) -> web.Response:
    _log.warning("console.db_unavailable")
    return console.render(
        "message.html",
        status=503,
        page=None,
        title="Records unavailable",
        message="The call records database is not answering; live calls are still shown.",
    )


# -- static files ---------------------------------------------------------------------------


async def static(request: web.Request) -> web.Response:
    if _token(request) is None:
        return _not_found()
    name = request.match_info["name"]
    kind = STATIC_FILES.get(name)
    if kind is None:
        return _not_found()
    body = resources.files("callbridge.console").joinpath("static", name).read_bytes()
    return web.Response(
        body=body,
        content_type=kind,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
