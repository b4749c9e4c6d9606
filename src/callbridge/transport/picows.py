"""What both picows sockets (the agent's, Twilio's) share: their lifecycle
(`PicowsSocket`), whole messages out of fragments, the polite close, which `send` a
socket has in its state, one logger for picows's own lines, and picows's server protocol
for a socket we accepted ourselves."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from picows import WSCloseCode, WSFrame, WSMsgType, WSTransport, WSUpgradeRequest

from callbridge.transport import MAX_UNSENT_BYTES

# picows logs flow control and disconnects without the call's id; our sockets report every
# close themselves, with the id, so only picows's errors are let through.
PICOWS_LOG = logging.getLogger("callbridge.picows")
PICOWS_LOG.setLevel(logging.ERROR)
_CLOSE_WAIT_SECONDS = 2.0
_HANDSHAKE_TIMEOUT_SECONDS = 5.0  # picows's default: an upgrade request within 5 s


def server_protocol_factory(
    listener_factory: Callable[[WSUpgradeRequest], object],
    *,
    max_frame_size: int,
    read_buffer_init_size: int,
) -> Callable[[], asyncio.BaseProtocol]:
    """picows's server protocol, exactly as `ws_create_server` builds it, for sockets that
    we accept (the main port routes them; see `server/shared_port.py`).

    picows has no public API for serving an accepted socket, so this repeats its
    `ws_create_server` (2.x) call argument for argument. If a picows release changes that,
    the factory raises TypeError when first called: `PicowsStreams.start` calls it once
    and falls back to aiohttp for streams, and a test fails."""
    from picows.picows import (  # type: ignore[attr-defined]  # not in picows's stubs
        WSAutoPingStrategy,
        WSProtocol,
    )

    def build() -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = WSProtocol(
            None,  # host and port: client side only
            None,  # path: client side only
            False,  # is_client_side
            listener_factory,
            PICOWS_LOG,
            True,  # disconnect_on_exception
            _HANDSHAKE_TIMEOUT_SECONDS,
            False,  # enable_auto_ping: Twilio's side needs none, its frames never stop
            20.0,  # auto_ping_idle_timeout (unused)
            20.0,  # auto_ping_reply_timeout (unused)
            WSAutoPingStrategy.PING_WHEN_IDLE,
            False,  # enable_auto_pong: the listener answers (and counts) pings
            max_frame_size,
            None,  # extra_headers: client side only
            read_buffer_init_size,
        )
        return protocol

    return build


Send = Callable[[bytes], None]


def drop_frame(frame: bytes) -> None:
    """`send` of a socket that is not open: the frame is dropped."""


def send_for(
    transport: WSTransport | None, *, usable: bool, paused: bool, watching: Send
) -> tuple[Send, WSTransport | None]:
    """The `send` a socket should have now, and the transport the compiled fast path may
    send to directly (None but in the common case). Both sockets rebind theirs as their
    state changes, so that the common case runs no Python: while the socket is usable and
    its transport keeps up, picows's own send with the frame type bound; while the
    transport's buffer is past its high-water mark, `watching` (which checks the backlog);
    before the socket opens or once it is no longer usable, nothing."""
    if transport is None or not usable:
        return drop_frame, None
    if paused:
        return watching, None
    return functools.partial(transport.send, WSMsgType.TEXT), transport


async def close_politely(transport: WSTransport, code: WSCloseCode) -> None:
    """A close frame, a short wait for the peer's, then the connection, whatever it says."""
    if transport.is_disconnected:
        return
    transport.send_close(code)
    try:
        async with asyncio.timeout(_CLOSE_WAIT_SECONDS):
            await transport.wait_disconnected()
    except TimeoutError:
        transport.disconnect(graceful=False)


# A peer may split a message into fragments (neither Twilio nor the agent is known to);
# picows hands over frames as they come.


class MessageTooBig(Exception):
    pass


class FragmentedMessages:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._parts: list[bytes] | None = None
        self._size = 0
        self._skipping = False  # a binary message's fragments, dropped

    @property
    def in_progress(self) -> bool:
        """A message has begun and its final fragment is still to come."""
        return self._parts is not None or self._skipping

    def skip(self, frame: WSFrame) -> None:
        """A BINARY frame (not taken): without fin, its continuations are dropped."""
        self._skipping = not frame.fin

    def add(self, frame: WSFrame) -> bytes | None:
        """Take a TEXT frame without fin or a CONTINUATION; the whole message once complete.

        A continuation of nothing (or of a skipped message) is ignored; past `max_bytes`
        raises MessageTooBig."""
        if frame.msg_type is WSMsgType.TEXT:
            self._parts, self._size = [], 0
        elif self._parts is None:
            self._skipping = self._skipping and not frame.fin
            return None
        self._size += frame.payload_size
        if self._size > self._max_bytes:
            self._parts = None
            raise MessageTooBig(f"message larger than {self._max_bytes} bytes")
        self._parts.append(frame.get_payload_as_bytes())
        if not frame.fin:
            return None
        message, self._parts = b"".join(self._parts), None
        return message


_TEXT = WSMsgType.TEXT


class PicowsSocket:
    """The lifecycle both picows sockets share: `send` rebound as the state changes (see
    `send_for`), writing paused and resumed with the transport's buffer, what arrives
    before serve() starts, a failure in a callback raised by serve() (in the task that
    owns the call), giving up on a peer that stopped reading, and closing at once.

    It goes ahead of the compiled fast path's class in the bases (`fast_path.
    TwilioAudioSocket`, `fast_path.AgentAudioSocket`, which hold `stopped` and `direct`)
    and adds nothing to a frame's path: the frame callbacks are the fast path's and the
    subclass's. It has no slots of its own (two bases with slots cannot be combined): each
    subclass declares these attributes among its `__slots__`."""

    if not TYPE_CHECKING:  # (type checkers would take these for the only attributes)
        __slots__ = ()

    _transport: WSTransport | None
    _paused: bool  # the transport's buffer is past its high-water mark
    _early: list[Any]  # what arrived before serve() started
    _failure: BaseException | None  # raised by serve()
    _fragments: FragmentedMessages
    send: Send
    # The fast path's class's.
    stopped: bool
    direct: WSTransport | None

    def __init__(self, max_message_bytes: int) -> None:
        super().__init__()
        self._transport = None
        self._paused = False
        self._early = []
        self._failure = None
        self._fragments = FragmentedMessages(max_message_bytes)
        self.send = drop_frame  # rebound with the state: see `send_for`

    def _sendable(self) -> bool:
        """Whether frames may still be sent (asked as the state changes, not a frame)."""
        raise NotImplementedError

    def _stalled(self, unsent: int) -> None:
        """The peer stopped reading (`unsent` bytes wait): give up on it."""
        raise NotImplementedError

    def _rebind_send(self) -> None:
        self.send, self.direct = send_for(
            self._transport,
            usable=self._sendable(),
            paused=self._paused,
            watching=self._send_watching,
        )

    def _send_watching(self, frame: bytes) -> None:
        transport = self._transport
        if transport is None or self.send is drop_frame:  # no longer usable
            return
        transport.send(_TEXT, frame)  # a no-op once closing
        unsent = transport.underlying_transport.get_write_buffer_size()
        if unsent > MAX_UNSENT_BYTES:
            self._stalled(unsent)

    def _stop(self) -> None:
        self.stopped = True  # and frames still in the read buffer are ignored
        self._rebind_send()

    def _take_early(self) -> list[Any]:
        early, self._early = self._early, []
        return early

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail_with(self, exc: Exception) -> None:
        """A bug in what the socket hands frames to: the connection ends at once and
        serve() raises `exc` (not picows's to log)."""
        if self._failure is None:
            self._failure = exc
        self._stop()
        if self._transport is not None:
            self._transport.disconnect(graceful=False)

    def abort(self, code: WSCloseCode) -> None:
        """Close at once (a close frame, then the connection), from any callback."""
        self._stop()
        if self._transport is not None and not self._transport.is_disconnected:
            self._transport.send_close(code)
            self._transport.disconnect()

    # --- picows's WSListener ------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._rebind_send()

    def pause_writing(self) -> None:
        self._paused = True
        self._rebind_send()

    def resume_writing(self) -> None:
        self._paused = False
        self._rebind_send()
