"""The Media Streams WebSocket endpoints: one socket from Twilio is one call."""

from __future__ import annotations

from aiohttp import web

from callbridge.agent.connection import agent_dialer
from callbridge.bot import Direction
from callbridge.bridge.call_bridge import CallBridge
from callbridge.logs import EventLogger
from callbridge.server.call_runner import CallRunner
from callbridge.server.state import APP_STATE
from callbridge.server.twilio_auth import SignatureError
from callbridge.twilio.media_stream import Start


async def inbound_stream(request: web.Request) -> web.StreamResponse:
    return await _serve_stream(request, "inbound")


async def outbound_stream(request: web.Request) -> web.StreamResponse:
    return await _serve_stream(request, "outbound")


async def _serve_stream(request: web.Request, direction: Direction) -> web.StreamResponse:
    state = request.app[APP_STATE]
    settings = state.settings
    call_id = request.match_info["call_id"]
    log = EventLogger("call", call_id=call_id)
    try:
        state.auth.check_stream_upgrade(request)
    except SignatureError as exc:
        log.warning("stream.refused", reason=str(exc))
        raise web.HTTPForbidden(text="forbidden\n") from None
    if call_id in state.registry.live:
        # Twilio has been seen opening a second socket for one call: two voices at once.
        log.warning("stream.refused", reason="a stream for this call is already live")
        raise web.HTTPConflict(text="duplicate stream\n")
    if state.http is None:
        raise web.HTTPServiceUnavailable(text="not started\n")
    # No permessage-deflate: μ-law audio in base64 hardly compresses, and it costs CPU.
    ws = web.WebSocketResponse(max_msg_size=settings.callbridge_max_message_bytes, compress=False)
    await ws.prepare(request)

    def admit(start: Start) -> str | None:
        token = start.start.custom_parameters.get("token")
        return state.registry.redeem_token(
            call_id, token if isinstance(token, str) else None, start.start.call_sid or None
        )

    bridge = CallBridge(
        session_config=state.bot.session_config(direction, settings.agent_voice),
        tools=state.bot.tools,
        apology_payloads=state.apology_payloads,
        apology_seconds=state.apology_seconds,
        idle_seconds=settings.callbridge_idle_seconds,
        max_call_seconds=settings.max_call_seconds,
        connect_retry_seconds=settings.callbridge_agent_retry_seconds,
        call_id=call_id,
        direction=direction,
    )
    runner = CallRunner(
        call_id=call_id,
        twilio_ws=ws,
        twilio_transport=request.transport,
        bridge=bridge,
        dial_agent=agent_dialer(
            settings.callbridge_agent_transport,
            settings.assemblyai_agent_url,
            settings.api_key,
            state.http,
        ),
        log=log,
        admit=admit,
        record=state.records.submit,
        max_messages_per_second=settings.callbridge_max_messages_per_second,
    )
    state.registry.live[call_id] = runner
    log.info("stream.opened", direction=direction)
    try:
        await runner.run()
    finally:
        state.registry.forget(call_id)
    return ws
