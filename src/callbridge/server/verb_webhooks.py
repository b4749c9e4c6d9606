"""Twilio's callbacks about the verbs acting on a call, each signed like every webhook:
the transfer's dial (the person answered; the dial is over), the answering-machine
detection's verdict, and a stream that ended without the call ending (a blip).

With several instances (`REDIS_URL`) a callback may reach one that does not hold the call:
the event is then sent to the holder through the shared state (`server/control.py`)."""

from __future__ import annotations

from aiohttp import web

from callbridge.bridge.verb_events import AmdVerdict, DialEnded, TransferAnswered
from callbridge.server.call_control import (
    AMD_STATUS_PATH,
    CallControl,
    dial_ended_path,
    stream_ended_path,
    transfer_answered_path,
)
from callbridge.server.shared_state import Command
from callbridge.server.state import APP_STATE, AppState
from callbridge.server.webhooks import public_http_base, signed_form, text_field
from callbridge.twilio import call_twiml
from callbridge.verbs import ANSWERED_BY

_TWIML = "text/xml"


def add_routes(app: web.Application) -> None:
    app.router.add_post(dial_ended_path("{call_id}"), dial_ended)
    app.router.add_post(transfer_answered_path("{call_id}"), transfer_answered)
    app.router.add_post(AMD_STATUS_PATH, amd_status)
    app.router.add_post(stream_ended_path("{call_id}", "{nonce}"), stream_ended)


def _twiml(text: str) -> web.Response:
    return web.Response(text=text, content_type=_TWIML)


async def dial_ended(request: web.Request) -> web.Response:
    """The `<Dial>`'s action: the caller comes back to the agent on a new stream when
    nobody took the call, else the call is over."""
    state = request.app[APP_STATE]
    form = await signed_form(request)
    status = text_field(request, form, "DialCallStatus") or "failed"
    call_id = request.match_info["call_id"]
    runner = state.registry.live.get(call_id)
    state.log.info("transfer.dial_ended", call_id=call_id, dial_status=status)
    if runner is None:
        # Held elsewhere: its bridge learns the outcome, but the caller's way back is a
        # stream to this instance, which does not hold the call: the call ends here.
        await _forward(state, "dial-ended", call_id, {"status": status})
        return _twiml(call_twiml.hangup_twiml())
    runner.end(DialEnded(status))
    if runner.accepts_stream:
        twiml = CallControl(state).reattach_twiml(runner, public_http_base(request, state))
        if twiml is not None:
            return _twiml(twiml)
    return _twiml(call_twiml.hangup_twiml())


async def stream_ended(request: web.Request) -> web.Response:
    """The `<Redirect>` after a call's `</Connect>`: Twilio runs it when the stream's socket
    closed and the call goes on. Our own hang-up closes it too (then `<Hangup>`); a socket
    that broke (`bridge/reattach.py`) gets a new stream that re-attaches to the call."""
    state = request.app[APP_STATE]
    form = await signed_form(request)
    call_sid = text_field(request, form, "CallSid")
    call_id = request.match_info["call_id"]
    runner = state.registry.live.get(call_id)
    outcome = "hangup"
    twiml = call_twiml.hangup_twiml()
    if runner is not None and call_sid not in (None, runner.bridge.call_sid):
        outcome = "wrong-call"  # signed, so ours: but never join another call's bridge
    elif runner is not None:
        runner.stream_ended()
        if runner.accepts_stream:
            reattach = CallControl(state).reattach_twiml(runner, public_http_base(request, state))
            if reattach is not None:
                outcome, twiml = "reattach", reattach
    elif (holder_url := await _holder_url(state, call_id)) is not None:
        # Held elsewhere (the load balancer chose this instance): the holder answers.
        outcome = "sent-to-holder"
        twiml = call_twiml.redirect_twiml(holder_url + stream_ended_path(call_id))
    state.log.info("stream.ended_callback", call_id=call_id, call_sid=call_sid, outcome=outcome)
    state.last_requests.arrived(call_id)
    return _twiml(twiml)


async def transfer_answered(request: web.Request) -> web.Response:
    """Run on the person's leg when they pick up, before the caller is bridged to them:
    the agent's session ends now. Empty TwiML connects them."""
    state = request.app[APP_STATE]
    await signed_form(request)
    call_id = request.match_info["call_id"]
    runner = state.registry.live.get(call_id)
    if runner is not None:
        runner.end(TransferAnswered())
    else:
        await _forward(state, "transfer-answered", call_id, {})
    return _twiml(call_twiml.empty_twiml())


async def amd_status(request: web.Request) -> web.Response:
    """Asynchronous answering-machine detection's verdict for an outbound call."""
    state = request.app[APP_STATE]
    form = await signed_form(request)
    call_sid = text_field(request, form, "CallSid")
    answered_by = text_field(request, form, "AnsweredBy")
    call_id = await state.shared.call_id_for_sid(call_sid) if call_sid else None
    state.log.info("call.amd_verdict", call_id=call_id, call_sid=call_sid, answered_by=answered_by)
    if answered_by not in ANSWERED_BY:
        return web.Response(status=204)
    runner = state.registry.live.get(call_id) if call_id else None
    if runner is not None:
        runner.end(AmdVerdict(answered_by))
    elif call_id is not None:
        await _forward(state, "amd", call_id, {"answered_by": answered_by})
    return web.Response(status=204)


async def _holder_url(state: AppState, call_id: str) -> str | None:
    """The URL that reaches the instance holding the call alone, if another one holds it
    and has one (`CALLBRIDGE_INSTANCE_URL`)."""
    if not state.shared.distributed:
        return None
    holder = await state.shared.holder(call_id)
    if holder is None or holder == state.shared.instance_id:
        return None
    return await state.shared.instance_url(holder)


async def _forward(state: AppState, name: str, call_id: str, args: dict[str, str]) -> None:
    """A callback for a call another instance holds: the event goes to that instance."""
    if not state.shared.distributed:
        return
    result = await state.shared.send(Command(name=name, call_id=call_id, args=args))
    state.log.info(
        "callback.forwarded",
        call_id=call_id,
        callback=name,
        delivered=result.delivered,
        instance_id=result.instance_id,
    )
