"""Twilio's HTTP webhooks (TwiML for inbound and outbound calls, status callbacks) and
the health endpoints."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy
from twilio.twiml.voice_response import VoiceResponse

from callbridge.bridge.verb_events import CallCompleted
from callbridge.records.entries import CallStatusChanged
from callbridge.server.bot_setup import set_up_call
from callbridge.server.call_control import stream_ended_path
from callbridge.server.call_registry import CallInfo, new_call_id
from callbridge.server.instance_urls import ws_base
from callbridge.server.log_throttle import refused
from callbridge.server.placed_calls import placed_call
from callbridge.server.state import APP_STATE, AppState
from callbridge.twilio import call_twiml
from callbridge.twilio.signatures import SignatureError, new_stream_token

# Spoken by Twilio when we cannot bridge a call at all (no agent configured).
UNAVAILABLE_TEXT = "Sorry, we can't take your call right now. Please try again later. Goodbye."
BUSY_TEXT = "Sorry, all our lines are busy right now. Please call again in a few minutes. Goodbye."
_TWIML = "text/xml"


async def _signed_form(request: web.Request) -> MultiDictProxy[Any]:
    """The form of a webhook that Twilio really sent, or a 403 (400 for a form that cannot
    be read at all), and nothing else happens. Both are logged, throttled per client."""
    state = request.app[APP_STATE]
    try:
        if request.content_type != _FORM:
            # Twilio posts URL-encoded forms only: no multipart parser for anyone else.
            raise _NotAForm
        form = await request.post()
    except _FORM_ERRORS as exc:
        # Read before the signature can be checked (it covers the form), so anyone can get
        # here: one fixed reason, none of the request's own text, no traceback.
        raise _bad_request(request, _unreadable(exc)) from None
    try:
        digest = state.auth.check_webhook(request, form)
        if digest is not None and not await state.shared.first_use(digest):
            # Accepted by another instance already (this one's memory caught it otherwise).
            raise SignatureError("replayed request", state.auth.public_url(request))
    except SignatureError as exc:
        refused(
            state.refusals,
            state.log,
            "webhook.refused",
            client=request.remote,
            reason=exc.reason,
            path=request.path,
            checked_url=exc.checked_url,
        )
        raise web.HTTPForbidden(text="forbidden\n") from None
    return form


_FORM = "application/x-www-form-urlencoded"


class _NotAForm(Exception):
    pass


# What reading a form can raise for a body that is not one: another content type (a
# multipart body, whose parser has more ways to fail), bytes that are not in the charset
# (UnicodeDecodeError), a charset Python does not know (LookupError).
_FORM_ERRORS = (_NotAForm, ValueError, LookupError)


def _unreadable(exc: Exception) -> str:
    if isinstance(exc, _NotAForm):
        return f"not a form: Content-Type must be {_FORM}"
    if isinstance(exc, UnicodeError):
        return "form body is not valid in its charset"
    if isinstance(exc, LookupError):
        return "unknown charset"
    return "malformed form body"


def _say_and_hang_up(text: str) -> web.Response:
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return web.Response(text=str(response), content_type=_TWIML)


async def inbound_twiml(request: web.Request) -> web.Response:
    return await _connect_twiml(request, direction="inbound", stream_path="media-stream")


async def outbound_twiml(request: web.Request) -> web.Response:
    return await _connect_twiml(request, direction="outbound", stream_path="outbound-stream")


async def _connect_twiml(request: web.Request, *, direction: str, stream_path: str) -> web.Response:
    form = await _signed_form(request)
    try:
        call_sid = _field(form, "CallSid")
        from_number, to_number = _field(form, "From"), _field(form, "To")
    except _InvalidField as exc:
        raise _bad_request(request, f"invalid {exc.name}") from None
    # A placed call's id, bot and parameters, signed into the URL's query (403 if forged).
    placed = (
        placed_call(request, to=to_number, call_sid=call_sid) if direction == "outbound" else None
    )
    return await _answer_call(
        request,
        direction,
        stream_path,
        call_sid,
        from_number,
        to_number,
        parameters=dict(placed.parameters) if placed else {},  # a dict: records encode it
        call_id=placed.call_id if placed else None,
        bot_name=placed.bot if placed else None,
    )


async def _answer_call(
    request: web.Request,
    direction: str,
    stream_path: str,
    call_sid: str | None,
    from_number: str | None,
    to_number: str | None,
    *,
    parameters: Mapping[str, str] | None = None,
    call_id: str | None = None,
    bot_name: str | None = None,
) -> web.Response:
    """Answer Twilio's request for a call's TwiML: the agent's stream, or what the bot's
    set-up decided instead. `parameters`, `call_id` and `bot_name` come with a call placed
    by callbridge (its custom parameters, its pre-assigned id, the bot asked for)."""
    state = request.app[APP_STATE]
    log = state.log.bind(call_sid=call_sid, direction=direction)
    if state.shutting_down:
        log.info("call.refused_busy", why="shutting down")
        return _say_and_hang_up(BUSY_TEXT)
    live_id = await state.shared.call_id_for_sid(call_sid) if call_sid else None
    if live_id is not None and await state.shared.holder(live_id) is not None:
        # Twilio is asking again for a call whose stream is live. Any TwiML we answered would
        # be run on that call, and a new token and id would take its CallSid from it: answer
        # nothing to run, and leave the live call as it is.
        log.warning("call.refused_duplicate", call_id=live_id, why="its stream is live")
        raise web.HTTPConflict(text="this call's stream is already live\n")
    reasons = state.not_ready_reasons()
    if reasons:
        log.error("call.refused", reasons=reasons)
        return _say_and_hang_up(UNAVAILABLE_TEXT)
    in_use = len(state.registry.live) + state.registry.pending_count()
    if in_use >= state.settings.max_calls:
        log.warning(
            "call.refused_busy", live=len(state.registry.live), limit=state.settings.max_calls
        )
        return _say_and_hang_up(BUSY_TEXT)

    token = new_stream_token()
    info = CallInfo(
        call_id=call_id or new_call_id(),
        direction=direction,
        call_sid=call_sid,
        from_number=from_number,
        to_number=to_number,
        parameters=dict(parameters or {}),  # a dict: records encode it
        stream_token=token,
    )
    refusal = await state.shared.announce(info, state.settings.max_calls_global)
    if refusal is not None:
        log.warning("call.refused_busy", why=refusal, limit=state.settings.max_calls_global)
        return _say_and_hang_up(BUSY_TEXT)
    # Announced (above) before the bot's set-up runs: a call being set up counts against
    # MAX_CALLS.
    log = log.bind(call_id=info.call_id)
    # The form was read (and its signature checked) already: aiohttp keeps it.
    decision = await set_up_call(state, info, bot_name, await request.post(), log)
    if decision.twiml is not None:
        # Refused or sent elsewhere: no stream, no agent session. Still known by its
        # CallSid, so that its status callbacks join its record.
        info.stream_token = None
        return web.Response(text=str(decision.twiml), content_type=_TWIML)
    stream_url = f"{_public_ws_base(request, state)}/{stream_path}/{info.call_id}"
    # The second lock on the stream: single use, bound to this call and its CallSid.
    stream_parameters = {"token": token, "direction": direction}
    if info.from_number:
        stream_parameters["from"] = info.from_number[:100]
    if info.to_number:
        stream_parameters["to"] = info.to_number[:100]
    ended_url = None
    if state.settings.callbridge_stream_lost_seconds:
        ended_url = _public_http_base(request, state) + stream_ended_path(info.call_id)
    twiml = call_twiml.stream_twiml(stream_url, stream_parameters, ended_url)
    log.info(
        "call.announced",
        from_number=info.from_number,
        to=info.to_number,
        bot=info.bot_name,
        setup=decision.outcome,
        parameters=sorted(info.parameters),  # names only: values may be personal
    )
    return web.Response(text=twiml, content_type=_TWIML)


async def call_status(request: web.Request) -> web.Response:
    state = request.app[APP_STATE]
    form = await _signed_form(request)
    try:
        call_sid = _field(form, "CallSid")
        status = _field(form, "CallStatus")
        sequence = _number(form, "SequenceNumber")
        duration = _number(form, "CallDuration")
        direction = _field(form, "Direction")
        from_number, to_number = _field(form, "From"), _field(form, "To")
        sip_response = _field(form, "SipResponseCode")  # logged only
    except _InvalidField as exc:
        raise _bad_request(request, f"invalid {exc.name}") from None
    call_id = await state.shared.call_id_for_sid(call_sid) if call_sid else None
    if call_sid and status:
        state.record(
            CallStatusChanged(
                call_sid=call_sid,
                status=status,
                at=time.time(),
                sequence=sequence,
                call_id=call_id,
                duration_seconds=duration,
                direction=direction,
                from_number=from_number,
                to_number=to_number,
            )
        )
    if status == "completed" and call_id is not None:
        call_completed(state, call_id)
    state.log.info(
        "call.status",
        call_id=call_id,
        call_sid=call_sid,
        status=status,
        sequence=sequence,
        duration=duration,
        sip_response=sip_response,
    )
    return web.Response(status=204)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[APP_STATE]
    reasons = state.not_ready_reasons()
    body = {
        "ready": not reasons,
        "reasons": reasons,
        "live_calls": len(state.registry.live),
        "max_calls": state.settings.max_calls,
        "signatures_checked": state.auth.enabled,
        "instance_id": state.shared.instance_id,
        "shared_state": "redis" if state.shared.distributed else "local",
        "shared_state_up": state.shared.up,
    }
    return web.json_response(body, status=503 if reasons else 200)


# Twilio's values are short, printable text and small whole numbers; anything else in a
# field we keep is refused here rather than stored (a NUL that PostgreSQL refuses, a number
# past the records' integer columns would only be turned away by the database later).
_MAX_FIELD_CHARS = 256
_MAX_NUMBER = 2**31 - 1  # PostgreSQL's INTEGER, the records' integer columns


class _InvalidField(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name  # ours, never the request's text


def _field(form: MultiDictProxy[Any], name: str) -> str | None:
    """A text field: None if absent or empty; _InvalidField if it is not short printable
    text."""
    value = form.get(name)
    if not isinstance(value, str) or not value:
        return None
    if len(value) > _MAX_FIELD_CHARS or not value.isprintable():
        raise _InvalidField(name)
    return value


def _number(form: MultiDictProxy[Any], name: str) -> int | None:
    """A whole-number field (0 up to the records' limit), else _InvalidField."""
    value = _field(form, name)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > _MAX_NUMBER:
        raise _InvalidField(name)
    return int(value)


def _bad_request(request: web.Request, reason: str) -> web.HTTPBadRequest:
    """A 400 and one line (throttled per client and reason); `reason` is fixed text."""
    state = request.app[APP_STATE]
    refused(
        state.refusals,
        state.log,
        "webhook.bad_request",
        client=request.remote,
        reason=reason,
        path=request.path,
    )
    return web.HTTPBadRequest(text=f"bad request: {reason}\n")


def _public_http_base(request: web.Request, state: AppState) -> str:
    """The line's public base for a call's URLs: PUBLIC_URL, or (unset) https:// and the
    Host Twilio called."""
    public = state.settings.public_url
    return public.rstrip("/") if public is not None else f"https://{request.host}"


def _public_ws_base(request: web.Request, state: AppState) -> str:
    """`_public_http_base` as ws(s)://, for stream URLs."""
    if state.settings.public_url is None and not state.warned_public_url:
        # Good enough for a quick ngrok trial (ngrok keeps the public Host header); a
        # deployment sets PUBLIC_URL, which request signatures will need anyway.
        state.log.warning("config.public_url_unset", using_host=request.host)
        state.warned_public_url = True
    return ws_base(_public_http_base(request, state))


# For the other webhooks of a call (`verb_webhooks.py`): the same checks, the same base.
signed_form = _signed_form
public_http_base = _public_http_base


def text_field(request: web.Request, form: MultiDictProxy[Any], name: str) -> str | None:
    """A short printable text field (None if absent), else a 400 for the request."""
    try:
        return _field(form, name)
    except _InvalidField as exc:
        raise _bad_request(request, f"invalid {exc.name}") from None


def call_completed(state: AppState, call_id: str) -> None:
    """Twilio says the call is over: a call waiting for its next stream ends now."""
    runner = state.registry.live.get(call_id)
    if runner is not None:
        runner.end(CallCompleted())
