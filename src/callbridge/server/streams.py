"""Media Streams: one socket from Twilio is one call.

The main port hands a stream's socket to picows (`picows_streams.py`) by default, or
serves it with the aiohttp routes here (`inbound_stream`, `outbound_stream`: with
CALLBRIDGE_MEDIA_STREAM_TRANSPORT=aiohttp, or for a stream on a reused keep-alive
connection). Both refuse the same way (`admit_stream`: the signature, then a duplicate
stream) and run the call the same way (`start_call`, `run_call`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from callbridge.agent.dial import agent_dialer
from callbridge.bot import Direction
from callbridge.bridge.call_bridge import CallBridge
from callbridge.bridge.silence import SilenceRules
from callbridge.logs import EventLogger
from callbridge.server.call_control import CallControl
from callbridge.server.call_runner import CallRunner
from callbridge.server.connections import on_reused_connection
from callbridge.server.log_throttle import refused
from callbridge.server.runner_control import call_bot, call_for, call_plan
from callbridge.server.setup_handoff import learn_setup
from callbridge.server.state import APP_STATE, AppState
from callbridge.twilio.aiohttp import AiohttpTwilioSocket
from callbridge.twilio.media_stream import Start
from callbridge.twilio.signatures import SignatureError
from callbridge.twilio.socket import TwilioSocket


class StreamRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def admit_stream(
    state: AppState,
    call_id: str,
    log: EventLogger,
    check_signature: Callable[[], None],
    client: str | None,
) -> None:
    """Raise StreamRefused (after logging why, throttled per client and reason) unless this
    upgrade may become a call."""
    try:
        check_signature()  # raises SignatureError
    except SignatureError as exc:
        refused(
            state.refusals,
            log,
            "stream.refused",
            client=client,
            reason=exc.reason,
            checked_url=exc.checked_url,
        )
        raise StreamRefused(403, "forbidden") from None
    _refuse_a_second_stream(state, call_id, log, client, reattach=True)


def _refuse_a_second_stream(
    state: AppState, call_id: str, log: EventLogger, client: str | None, *, reattach: bool
) -> None:
    runner = state.registry.live.get(call_id)
    if runner is not None and not (reattach and runner.accepts_stream):
        # Twilio has been seen opening a second socket for one call: two voices at once.
        reason = "a stream for this call is already live"
        refused(state.refusals, log, "stream.refused", client=client, reason=reason)
        raise StreamRefused(409, "duplicate stream")


def start_call(
    state: AppState,
    call_id: str,
    direction: Direction,
    twilio_socket: TwilioSocket,
    log: EventLogger,
    client: str | None,
) -> CallRunner:
    """The call's bridge and runner, registered as live (run it with `run_call`).

    Raises StreamRefused if another stream for the call went live since `admit_stream`
    (the upgrade awaits in between)."""
    _refuse_a_second_stream(state, call_id, log, client, reattach=False)
    settings = state.settings

    def logged(refusal: str | None) -> str | None:
        if refusal is not None:
            refused(state.refusals, log, "stream.refused", client=client, reason=refusal)
        return refusal

    def presented(start: Start) -> tuple[str | None, str | None]:
        token = start.start.custom_parameters.get("token")
        return (token if isinstance(token, str) else None), start.start.call_sid or None

    admit: Callable[[Start], str | Awaitable[str | None] | None]
    if state.shared.distributed:
        admitted_here = False

        async def admit_shared(start: Start) -> str | None:
            nonlocal admitted_here
            token, call_sid = presented(start)
            if admitted_here:
                # A later stream of a call held here (after a transfer or keypad tones)
                # presents the token this instance reissued: it is checked here.
                return logged(state.registry.redeem_token(call_id, token, call_sid))
            refusal = logged(await state.shared.admit_stream(call_id, token, call_sid))
            if refusal is None:
                admitted_here = True
                # The webhook may have been answered by another instance: know the call
                # here too, so that its next stream's token can be issued here.
                state.registry.know(call_id, direction, call_sid)
            return refusal

        admit = admit_shared
    else:  # answered in this process, before the next frame is read

        def admit_here(start: Start) -> str | None:
            return logged(state.registry.redeem_token(call_id, *presented(start)))

        admit = admit_here

    info = state.registry.info(call_id)
    plan = call_plan(state, info, direction)
    bridge = CallBridge(
        session_config=plan.first_update,
        tools=plan.tools,
        follow_up=plan.follow_up,
        setup_error=info.setup_error if info is not None else None,
        apology_payloads=state.apology_payloads,
        apology_seconds=state.apology_seconds,
        idle_seconds=settings.callbridge_idle_seconds,
        max_call_seconds=settings.max_call_seconds,
        connect_retry_seconds=settings.callbridge_agent_retry_seconds,
        call_id=call_id,
        direction=direction,
        verbs=call_bot(state, info).verbs,
        keypad=call_bot(state, info).keypad,
        silence=call_bot(state, info).silence
        or SilenceRules(
            settings.callbridge_silence_prompt_seconds, settings.callbridge_silence_prompts
        ),
        stream_lost_seconds=settings.callbridge_stream_lost_seconds,
        hang_up_wait_seconds=settings.callbridge_goodbye_wait_seconds,
    )
    runner = CallRunner(
        call_id=call_id,
        twilio_socket=twilio_socket,
        bridge=bridge,
        dial_agent=agent_dialer(
            settings.callbridge_agent_transport,
            settings.assemblyai_agent_url,
            settings.api_key,
            state.http,
        ),
        log=log,
        admit=admit,
        record=state.record,
        max_messages_per_second=settings.callbridge_max_messages_per_second,
        fast_path=settings.callbridge_fast_path,
    )
    runner.set_redirect(CallControl(state).redirect)
    runner.call = call_for(state, info, call_id, direction, runner, plan)
    state.registry.live[call_id] = runner
    log.info("stream.opened", direction=direction)
    return runner


def reattach_stream(
    state: AppState, call_id: str, twilio_socket: TwilioSocket
) -> asyncio.Future[None] | None:
    """Hand a new stream to its live call, if that call waits for one (the call's
    runner serves it; the future is done when it is through with it)."""
    runner = state.registry.live.get(call_id)
    return None if runner is None else runner.attach(twilio_socket)


async def run_call(state: AppState, call_id: str, runner: CallRunner) -> None:
    try:
        await runner.run()
    finally:
        if state.registry.live.get(call_id) is runner:
            state.registry.forget(call_id)
        await state.shared.call_ended(call_id)  # frees nothing unless it was live here


async def inbound_stream(request: web.Request) -> web.StreamResponse:
    return await _serve_stream(request, "inbound")


async def outbound_stream(request: web.Request) -> web.StreamResponse:
    return await _serve_stream(request, "outbound")


async def _serve_stream(request: web.Request, direction: Direction) -> web.StreamResponse:
    state = request.app[APP_STATE]
    call_id = request.match_info["call_id"]
    log = EventLogger("call", call_id=call_id)
    try:
        admit_stream(
            state, call_id, log, lambda: state.auth.check_stream_upgrade(request), request.remote
        )
    except StreamRefused as exc:
        raise _http_error(exc) from None
    if state.http is None:
        raise web.HTTPServiceUnavailable(text="not started\n")
    if (
        state.picows_streams
        and not state.warned_stream_on_aiohttp
        and on_reused_connection(request)
    ):
        # The main port routes a connection by its first request: this one began with
        # another request, so a proxy in front is reusing connections for upgrades.
        state.warned_stream_on_aiohttp = True
        log.warning(
            "stream.on_reused_connection",
            effect="served by aiohttp: about a third more CPU per frame than picows",
            fix="let the proxy open a new upstream connection for each WebSocket upgrade",
        )
    # No permessage-deflate: μ-law audio in base64 hardly compresses, and it costs CPU.
    # Text frames stay bytes: the JSON decoder takes bytes (and checks their UTF-8) as is.
    # No autoping: the socket answers pings, and counts them towards the message limit.
    ws = web.WebSocketResponse(
        max_msg_size=state.settings.callbridge_max_message_bytes,
        compress=False,
        decode_text=False,
        autoping=False,
    )
    await ws.prepare(request)
    twilio_socket = AiohttpTwilioSocket(
        ws, request.transport, state.settings.callbridge_max_messages_per_second
    )
    served = reattach_stream(state, call_id, twilio_socket)
    if served is not None:
        await served  # the call's runner reads this socket; it closes when we return
        return ws
    await learn_setup(state, call_id, log)  # its webhook may have reached another instance
    try:
        runner = start_call(state, call_id, direction, twilio_socket, log, request.remote)
    except StreamRefused:
        await twilio_socket.close(aiohttp.WSCloseCode.POLICY_VIOLATION)
        return ws
    await run_call(state, call_id, runner)
    return ws


def _http_error(refused: StreamRefused) -> web.HTTPException:
    if refused.status == 409:
        return web.HTTPConflict(text=f"{refused}\n")
    return web.HTTPForbidden(text=f"{refused}\n")
