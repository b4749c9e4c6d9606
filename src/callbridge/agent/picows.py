"""The upstream socket on picows: each frame is decoded and handed on inside the frame
callback, so relaying a frame costs no task switch, queue or future."""

from __future__ import annotations

import asyncio

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSError,
    WSFrame,
    WSInvalidStatusError,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from callbridge import fast_path
from callbridge.agent import events as agent
from callbridge.agent.socket import (
    CONNECT_TIMEOUT_SECONDS,
    MAX_AGENT_MESSAGE_BYTES,
    PING_AFTER_IDLE_SECONDS,
    PONG_TIMEOUT_SECONDS,
    AgentConnectError,
    EventSink,
)
from callbridge.transport.picows import PICOWS_LOG, MessageTooBig, PicowsSocket, close_politely

_TEXT = WSMsgType.TEXT
_decode = agent.decode_strict
_DECODE_ERRORS = agent.DECODE_ERRORS


class PicowsAgentSocket(PicowsSocket, fast_path.AgentAudioSocket):
    """Frames come to `_on_frame`, through the compiled fast path when there is one (which
    takes the reply audio the bridge lets it relay, see `callbridge.fast_path`)."""

    # No instance dict: see `PicowsTwilioSocket.__slots__`. `PicowsSocket`'s attributes are
    # among these.
    __slots__ = (
        "_early",
        "_failed_with",
        "_failure",
        "_fragments",
        "_paused",
        "_reason",
        "_sink",
        "_transport",
        "send",
    )

    def __init__(self) -> None:
        super().__init__(MAX_AGENT_MESSAGE_BYTES)
        self._sink: EventSink | None = None
        self._failed_with: int | None = None  # the close code we failed the connection with
        self._reason = ""

    # --- AgentSocket ------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.stopped

    def _sendable(self) -> bool:
        return not self.stopped

    def _stalled(self, unsent: int) -> None:
        self._give_up("the agent stopped reading (send buffer full)")

    async def serve(self, sink: EventSink) -> tuple[int | None, str]:
        transport = self._transport
        assert transport is not None, "serve() before the socket was opened"
        early = self._take_early()  # events before serve() started (none in practice)
        self._sink = sink
        for event in early:
            sink(event)
        await transport.wait_disconnected()
        self._raise_failure()  # a bug in the sink: the call's owner reports it
        received = transport.close_handshake.recv if transport.close_handshake else None
        # The peer's close code; else the one we failed the connection with (as aiohttp's
        # socket reports it).
        code = received.code.value if received is not None else self._failed_with
        # picows gives None for a close frame without a reason, whatever its stub says.
        reason = self._reason or (received.reason if received is not None else None) or ""
        return code, reason

    async def close(self) -> None:
        if self._transport is not None:
            self._stop()
            await close_politely(self._transport, WSCloseCode.OK)

    # --- WSListener -------------------------------------------------------------------

    def _on_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.stopped:
            return  # given up, or closing: picows delivers the rest of a read regardless
        kind = frame.msg_type
        event: object
        if kind is _TEXT and frame.fin:  # nearly every frame
            data = frame.get_payload_as_memoryview()
            try:
                event = _decode(data)
            except _DECODE_ERRORS as exc:
                event = agent.undecodable(data, exc)
                if type(event) is agent.InvalidText:
                    self._fail_connection(event.reason)
                    return
        elif kind is WSMsgType.CLOSE:
            self.abort(frame.get_close_code())
            return
        elif kind is _TEXT or kind is WSMsgType.CONTINUATION:
            try:
                message = self._fragments.add(frame)
            except MessageTooBig:
                self._give_up("message larger than the size limit")
                return
            if message is None:
                return
            event = agent.decode(message)
            if type(event) is agent.InvalidText:
                self._fail_connection(event.reason)
                return
        elif kind is WSMsgType.BINARY:
            event = agent.InvalidEvent("binary frame")
        else:
            return  # ping and pong: picows answers them
        self._deliver(event)

    def _deliver(self, event: object) -> None:
        """Hand an event on. The compiled fast path calls this for the events it decoded
        but did not relay, so they are not decoded twice; reply audio it did not relay
        is still base64 text there, and goes to `_on_frame` to be decoded in full."""
        sink = self._sink
        if sink is None:
            self._early.append(event)
            return
        try:
            sink(event)
        except Exception as exc:
            self._fail_with(exc)

    if not fast_path.COMPILED:
        on_ws_frame = _on_frame  # every frame takes the full path: called directly

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._stop()

    # --- internals --------------------------------------------------------------------

    def _fail_connection(self, reason: str) -> None:
        """Text that is not UTF-8: RFC 6455 fails the connection with close code 1007. The
        runner sees the socket close with `reason`, as for any broken connection."""
        if self._transport is not None:
            self._failed_with = WSCloseCode.INVALID_TEXT.value
        if not self._reason:
            self._reason = reason
        self.abort(WSCloseCode.INVALID_TEXT)

    def _give_up(self, reason: str) -> None:
        self._stop()
        if reason and not self._reason:
            self._reason = reason
        if self._transport is not None:
            self._transport.disconnect(graceful=False)


async def open_picows_socket(url: str, headers: dict[str, str]) -> PicowsAgentSocket:
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            _, listener = await ws_connect(
                PicowsAgentSocket,
                url,
                websocket_handshake_timeout=CONNECT_TIMEOUT_SECONDS,
                enable_auto_ping=True,
                auto_ping_idle_timeout=PING_AFTER_IDLE_SECONDS,
                auto_ping_reply_timeout=PONG_TIMEOUT_SECONDS,
                auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
                max_frame_size=MAX_AGENT_MESSAGE_BYTES,
                extra_headers=headers,
                logger_name=PICOWS_LOG,  # a name would be picows.<name>, outside our logs
                # Agent events are under 1 KiB; the buffer grows for the rare larger one.
                read_buffer_init_size=4096,
            )
    except WSInvalidStatusError as exc:
        status = int(exc.response.status) if exc.response is not None else 0
        raise AgentConnectError(f"upgrade refused with HTTP {status}") from None
    except TimeoutError:
        raise AgentConnectError(f"no connection within {CONNECT_TIMEOUT_SECONDS:g} s") from None
    except (WSError, OSError) as exc:
        raise AgentConnectError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(listener, PicowsAgentSocket):
        # picows returns no listener when the peer hangs up before answering the upgrade.
        raise AgentConnectError("connection closed during the upgrade")
    return listener
