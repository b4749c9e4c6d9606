"""What both picows sockets (the agent's, Twilio's) share: whole messages out of fragments,
the polite close, which `send` a socket has in its state, one logger for picows's own
lines, and picows's server protocol for a socket we accepted ourselves."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from picows import WSCloseCode, WSFrame, WSMsgType, WSTransport, WSUpgradeRequest

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
