"""The Twilio side's socket, behind one small interface (the twin of `agent/connection.py`).

`PicowsTwilioSocket` is a Media Stream that the main port handed to picows (the default,
see `shared_port.py` and `picows_streams.py`); `AiohttpTwilioSocket` one served by
aiohttp's stream routes (`CALLBRIDGE_MEDIA_STREAM_TRANSPORT=aiohttp`, or a stream on a
reused keep-alive connection). Either way the runner gets text frames through a callback
and sends pre-encoded frames without awaiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
from aiohttp import web
from picows import WSCloseCode, WSFrame, WSMsgType, WSTransport

from callbridge import fast_path
from callbridge.agent.connection import MAX_UNSENT_BYTES  # the same rule for Twilio
from callbridge.aiohttp_sockets import describe_error, send_text_bounded
from callbridge.bridge.inputs import TwilioProtocolError
from callbridge.picows_sockets import (
    FragmentedMessages,
    MessageTooBig,
    Send,
    close_politely,
    drop_frame,
    send_for,
)
from callbridge.twilio import media_stream as twilio

_TEXT = WSMsgType.TEXT
_AIOHTTP_TEXT = aiohttp.WSMsgType.TEXT
_AIOHTTP_ENDS = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
_CONTROL = (WSMsgType.PING, WSMsgType.PONG)
# Close codes a peer may send (RFC 6455, 7.4): the registered ones but those that must
# never be sent (1004-1006, 1015), and 3000-4999 (libraries, applications).
_SENDABLE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015)))

TextHandler = Callable[[bytes | str | memoryview], bool]  # False: stop reading
EventHandler = Callable[[object], None]


class TwilioSocket(Protocol):
    @property
    def closed(self) -> bool: ...

    def send(self, frame: bytes) -> None:
        """Queue one text frame. Never raises: a frame for a closing socket is dropped.
        Look it up for each frame, never keep it: a socket may rebind it as its state
        changes (the picows socket does, so that an open socket's send runs no Python)."""

    async def serve(self, on_text: TextHandler, on_event: EventHandler) -> None:
        """Hand each text frame to `on_text` (and anything else, as an event, to `on_event`)
        until the socket closes or `on_text` returns False."""

    async def close(self, code: int) -> None: ...

    def fail(self, code: int) -> None:
        """Fail the connection with `code` (RFC 6455's "fail the WebSocket connection"),
        from inside `on_text`: no frame is read after this one, and the close frame says
        `code` whatever closes the socket afterwards."""


class ControlFrames:
    """Pings and pongs, held to the stream's message limit (per second, as the runner
    holds the other messages): a ping flood ends the stream instead of being answered."""

    __slots__ = ("_left", "_limit", "_window")

    def __init__(self, max_per_second: int) -> None:
        self._limit = max_per_second
        self._left = 0
        self._window = -1.0

    def over_limit(self) -> TwilioProtocolError | None:
        """Count one; the error to report once past the limit, else None."""
        self._left -= 1
        if self._left >= 0:
            return None
        now = time.monotonic()
        if now - self._window < 1.0:
            return TwilioProtocolError(f"more than {self._limit} pings and pongs per second")
        self._window, self._left = now, self._limit - 1
        return None


class AiohttpTwilioSocket:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        max_messages_per_second: int = 200,
    ) -> None:
        """`ws` without autoping: pings come here, to be counted and answered."""
        self._ws = ws
        self._transport = transport
        self._gave_up = ""
        self._fail_code: int | None = None
        self._controls = ControlFrames(max_messages_per_second)

    @property
    def closed(self) -> bool:
        return self._ws.closed or bool(self._gave_up)

    def fail(self, code: int) -> None:
        # on_text returns False next, and serve() returns: the runner's close says `code`.
        if self._fail_code is None:
            self._fail_code = code

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        unsent = send_text_bounded(self._ws, frame, self._transport, MAX_UNSENT_BYTES)
        if unsent:
            self._gave_up = _stalled(unsent)
            self._transport.abort()  # type: ignore[union-attr]  # not None: it reported

    async def serve(self, on_text: TextHandler, on_event: EventHandler) -> None:
        ws = self._ws
        receive = ws.receive  # not `async for`: one coroutine less per frame
        while True:
            msg = await receive()
            kind = msg.type
            if kind is _AIOHTTP_TEXT:
                if not on_text(msg.data):
                    break
            elif kind in _AIOHTTP_ENDS:
                break
            elif kind is aiohttp.WSMsgType.PING or kind is aiohttp.WSMsgType.PONG:
                flood = self._controls.over_limit()
                if flood is not None:
                    on_event(flood)
                    await self.close(aiohttp.WSCloseCode.POLICY_VIOLATION)
                    break
                if kind is aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
            elif kind is aiohttp.WSMsgType.BINARY:
                on_event(twilio.InvalidFrame("binary frame"))
            elif kind is aiohttp.WSMsgType.ERROR:
                on_event(TwilioProtocolError(describe_error(msg)))
        if self._gave_up:
            on_event(TwilioProtocolError(self._gave_up))

    async def close(self, code: int) -> None:
        if not self._ws.closed:
            await self._ws.close(code=self._fail_code or code)


class PicowsTwilioSocket(fast_path.TwilioAudioSocket):
    """A picows listener; `on_connected` starts the call once the upgrade is done. Frames
    come to `_on_frame`, through the compiled fast path when there is one (which takes
    the caller audio the bridge lets it relay, see `callbridge.fast_path`)."""

    # No instance dict: picows calls the compiled frame callback through Cython's check
    # for a Python override, which looks for one in the instance dict; without a dict
    # there is nothing to look up on each frame.
    __slots__ = (
        "_controls",
        "_early",
        "_failure",
        "_fragments",
        "_gave_up",
        "_on_connected",
        "_on_event",
        "_on_text",
        "_paused",
        "_transport",
        "send",
    )

    def __init__(
        self,
        on_connected: Callable[[PicowsTwilioSocket], None],
        max_bytes: int,
        max_messages_per_second: int = 200,
    ):
        super().__init__()
        # picows's automatic pong is off for these sockets: pings are answered here.
        self._controls = ControlFrames(max_messages_per_second)
        self._on_connected = on_connected
        self._transport: WSTransport | None = None
        self._on_text: TextHandler | None = None
        self._on_event: EventHandler | None = None
        self._early: list[bytes] = []  # frames before serve() starts
        self._fragments = FragmentedMessages(max_bytes)
        self._failure: BaseException | None = None
        self._gave_up = ""
        self._paused = False  # the transport's buffer is past its high-water mark
        # Rebound with the state (see `send_for`); picows's send is a no-op once closing,
        # so only giving up on a stalled peer makes the socket unusable for sending.
        self.send: Send = drop_frame

    @property
    def closed(self) -> bool:
        transport = self._transport
        return transport is None or transport.is_disconnected or transport.is_close_frame_sent

    def _send_watching(self, frame: bytes) -> None:
        transport = self._transport
        if transport is None or self._gave_up:
            return
        transport.send(_TEXT, frame)  # a no-op once closing
        unsent = transport.underlying_transport.get_write_buffer_size()
        if unsent > MAX_UNSENT_BYTES:
            self._gave_up = _stalled(unsent)
            self.stopped = True
            self._rebind_send()
            transport.disconnect(graceful=False)

    def _rebind_send(self) -> None:
        self.send, self.direct = send_for(
            self._transport,
            usable=not self._gave_up,
            paused=self._paused,
            watching=self._send_watching,
        )

    async def serve(self, on_text: TextHandler, on_event: EventHandler) -> None:
        transport = self._transport
        assert transport is not None, "serve() before the upgrade"
        self._on_text, self._on_event = on_text, on_event
        early, self._early = self._early, []
        for message in early:
            self._text(message)
        await transport.wait_disconnected()
        if self._failure is not None:
            raise self._failure  # a bug in the runner: the call's owner reports it
        if self._gave_up:
            on_event(TwilioProtocolError(self._gave_up))

    async def close(self, code: int) -> None:
        if self._transport is not None:
            await close_politely(self._transport, WSCloseCode(code))

    # --- picows's WSListener ------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._rebind_send()
        self._on_connected(self)

    def pause_writing(self) -> None:
        self._paused = True
        self._rebind_send()

    def resume_writing(self) -> None:
        self._paused = False
        self._rebind_send()

    def _on_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.stopped:
            return  # picows delivers the rest of a read even after we disconnect
        kind = frame.msg_type
        if kind is _TEXT and frame.fin and not (frame.rsv1 or frame.rsv2 or frame.rsv3):
            # Nearly every frame: `_text` written out, saving a Python call per frame
            # (`_text` serves the rare rest: reassembled fragments, frames from before serve()).
            on_text = self._on_text
            if on_text is None:
                self._early.append(bytes(frame.get_payload_as_memoryview()))
                return
            try:
                if on_text(frame.get_payload_as_memoryview()):
                    return
            except Exception as exc:
                self._fail(exc)
                return
            self.abort(WSCloseCode.POLICY_VIOLATION)
            return
        if frame.rsv1 or frame.rsv2 or frame.rsv3:  # no extension was negotiated
            self._protocol_error("a frame with reserved bits set")
        elif kind in _CONTROL:
            self._control(transport, frame)
        elif kind is WSMsgType.CLOSE:
            self._close_frame(transport, frame)
        elif kind is _TEXT or kind is WSMsgType.CONTINUATION:
            if (kind is WSMsgType.CONTINUATION) != self._fragments.in_progress:
                self._protocol_error(
                    "a continuation frame with no message begun"
                    if kind is WSMsgType.CONTINUATION
                    else "a new message before the last one's final fragment"
                )
                return
            try:
                message = self._fragments.add(frame)
            except MessageTooBig as exc:
                self._event(TwilioProtocolError(str(exc)))
                self.abort(WSCloseCode.MESSAGE_TOO_BIG)
                return
            if message is not None:
                self._text(message)
        elif kind is WSMsgType.BINARY:
            self._event(twilio.InvalidFrame("binary frame"))
            self._fragments.skip(frame)

    if not fast_path.COMPILED:
        on_ws_frame = _on_frame  # every frame takes the full path: called directly

    # --- internals --------------------------------------------------------------------

    def _text(self, data: bytes | memoryview) -> None:
        if self._on_text is None:
            self._early.append(bytes(data))
            return
        try:
            keep_reading = self._on_text(data)
        except Exception as exc:
            self._fail(exc)
            return
        if not keep_reading:
            self.abort(WSCloseCode.POLICY_VIOLATION)

    def _control(self, transport: WSTransport, frame: WSFrame) -> None:
        flood = self._controls.over_limit()
        if flood is not None:
            self._event(flood)
            self.abort(WSCloseCode.POLICY_VIOLATION)
            return
        if frame.msg_type is WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())

    def _close_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Answer the peer's close: its code, if one a peer may send; else 1002."""
        code: int = frame.get_close_code().value if frame.payload_size else 1000
        if code in _SENDABLE_CLOSE_CODES or 3000 <= code <= 4999:
            transport.send_close(WSCloseCode(code))
            transport.disconnect()
        else:
            self._protocol_error(f"a close frame with code {code}")

    def _protocol_error(self, what: str) -> None:
        self._event(TwilioProtocolError(f"WebSocket protocol error: {what}"))
        self.abort(WSCloseCode.PROTOCOL_ERROR)

    def _event(self, event: object) -> None:
        if self._on_event is None:
            return  # before serve(): nothing to tell yet
        try:
            self._on_event(event)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        self.stopped = True
        if self._transport is not None:
            self._transport.disconnect(graceful=False)

    def fail(self, code: int) -> None:
        self.abort(WSCloseCode(code))  # the POLICY_VIOLATION abort that follows sends nothing

    def abort(self, code: WSCloseCode) -> None:
        """Close at once (a close frame, then the connection), from any callback."""
        self.stopped = True
        if self._transport is not None and not self._transport.is_disconnected:
            self._transport.send_close(code)
            self._transport.disconnect()


def _stalled(unsent: int) -> str:
    return f"Twilio stopped reading ({unsent} bytes unsent)"
