"""A Media Stream that the main port handed to picows (the default): frames are handled
in picows's C callbacks, through the compiled fast path when there is one."""

from __future__ import annotations

from collections.abc import Callable

from picows import WSCloseCode, WSFrame, WSMsgType, WSTransport

from callbridge import fast_path
from callbridge.transport.picows import MessageTooBig, PicowsSocket, close_politely
from callbridge.twilio import media_stream as twilio
from callbridge.twilio.media_stream import TwilioProtocolError
from callbridge.twilio.socket import ControlFrames, EventHandler, TextHandler, stalled

_TEXT = WSMsgType.TEXT
_CONTROL = (WSMsgType.PING, WSMsgType.PONG)
# Close codes a peer may send (RFC 6455, 7.4): the registered ones but those that must
# never be sent (1004-1006, 1015), and 3000-4999 (libraries, applications).
_SENDABLE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015)))


class PicowsTwilioSocket(PicowsSocket, fast_path.TwilioAudioSocket):
    """A picows listener; `on_connected` starts the call once the upgrade is done. Frames
    come to `_on_frame`, through the compiled fast path when there is one (which takes
    the caller audio the bridge lets it relay, see `callbridge.fast_path`)."""

    # No instance dict: picows calls the compiled frame callback through Cython's check
    # for a Python override, which looks for one in the instance dict; without a dict there
    # is nothing to look up on each frame. `PicowsSocket`'s attributes are among these.
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
        "_peer_closed",
        "_transport",
        "send",
    )

    def __init__(
        self,
        on_connected: Callable[[PicowsTwilioSocket], None],
        max_bytes: int,
        max_messages_per_second: int = 200,
    ):
        super().__init__(max_bytes)
        # picows's automatic pong is off for these sockets: pings are answered here.
        self._controls = ControlFrames(max_messages_per_second)
        self._on_connected = on_connected
        self._on_text: TextHandler | None = None
        self._on_event: EventHandler | None = None
        self._gave_up = ""
        self._peer_closed = False  # Twilio began a closing handshake

    @property
    def closed(self) -> bool:
        transport = self._transport
        return transport is None or transport.is_disconnected or transport.is_close_frame_sent

    @property
    def ended_here(self) -> bool:
        if self.stopped:  # our own abort, failure or give-up
            return True
        # picows's own refusals (a frame past max_frame_size) send a close frame first.
        transport = self._transport
        return transport is not None and transport.is_close_frame_sent and not self._peer_closed

    def _sendable(self) -> bool:
        # picows's send is a no-op once closing, so only giving up on a stalled peer makes
        # the socket unusable for sending.
        return not self._gave_up

    def _stalled(self, unsent: int) -> None:
        self._gave_up = stalled(unsent)
        self._stop()
        if self._transport is not None:
            self._transport.disconnect(graceful=False)

    async def serve(self, on_text: TextHandler, on_event: EventHandler) -> None:
        transport = self._transport
        assert transport is not None, "serve() before the upgrade"
        self._on_text, self._on_event = on_text, on_event
        for message in self._take_early():
            self._text(message)
        await transport.wait_disconnected()
        self._raise_failure()  # a bug in the runner: the call's owner reports it
        if self._gave_up:
            on_event(TwilioProtocolError(self._gave_up))

    async def close(self, code: int) -> None:
        if self._transport is not None:
            await close_politely(self._transport, WSCloseCode(code))

    # --- picows's WSListener ------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        super().on_ws_connected(transport)
        self._on_connected(self)

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
                self._fail_with(exc)
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
            self._fail_with(exc)
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
        if not transport.is_close_frame_sent:  # not an answer to a close of ours
            self._peer_closed = True
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
            self._fail_with(exc)

    def fail(self, code: int) -> None:
        self.abort(WSCloseCode(code))  # the POLICY_VIOLATION abort that follows sends nothing
