"""What both aiohttp sockets (Twilio's on the main port, the agent's when chosen) share
(`AiohttpSocket`): writing a frame without awaiting, giving up on a peer that stopped
reading, and saying what went wrong.

aiohttp's `send_frame` is a coroutine only so that it can wait for the peer to drain a
full buffer; the frame itself is written in its first step. Relaying audio from inside
another socket's callback cannot await, and a task per frame would cost more than the
relay itself. So the coroutine is stepped by hand, as a Task would step it: it nearly
always finishes in the first step; when it waits for the drain instead, the rest of it
runs when the drain is done. Frames stay in order because each is written in its first
step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

import aiohttp
from aiohttp import web

from callbridge.transport import MAX_UNSENT_BYTES

_TEXT = aiohttp.WSMsgType.TEXT
WebSocket = TypeVar("WebSocket", web.WebSocketResponse, aiohttp.ClientWebSocketResponse)


class AiohttpSocket(Generic[WebSocket]):
    """An aiohttp WebSocket that frames are sent to without awaiting; `closed` once the
    socket closes or once the peer stopped reading (`_gave_up` says why)."""

    def __init__(self, ws: WebSocket, transport: asyncio.Transport | None) -> None:
        self._ws: WebSocket = ws
        self._transport = transport  # for its buffer size (aiohttp does not expose it)
        self._gave_up = ""

    @property
    def closed(self) -> bool:
        return self._ws.closed or bool(self._gave_up)

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        unsent = send_text_bounded(self._ws, frame, self._transport, MAX_UNSENT_BYTES)
        if unsent:
            self._gave_up = self._why_stalled(unsent)
            self._transport.abort()  # type: ignore[union-attr]  # not None: it reported

    def _why_stalled(self, unsent: int) -> str:
        """Why the socket gave up on the peer: it stopped reading, `unsent` bytes wait."""
        raise NotImplementedError


def send_text_bounded(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    frame: bytes,
    transport: asyncio.Transport | None,
    max_unsent: int,
) -> int:
    """Write `frame`; return how much is unsent if that is past `max_unsent` (the peer has
    stopped reading: the caller gives up on it), else 0. A closing socket drops the frame
    (its reader reports the close)."""
    if not _step(ws.send_frame(frame, _TEXT)) or transport is None:
        return 0
    unsent = transport.get_write_buffer_size()
    return unsent if unsent > max_unsent else 0


def _step(coro: Coroutine[Any, Any, None]) -> bool:
    """Run the coroutine on; True while it waits for the peer to drain the buffer."""
    try:
        awaited = coro.send(None)
    except StopIteration:
        return False
    except (ConnectionError, aiohttp.ClientError, RuntimeError):
        return False
    # What a Task does with a future its coroutine yields: clear the flag that marks it as
    # being awaited (else the next frame's coroutine cannot await the same drain), then
    # resume the coroutine when it is done.
    awaited._asyncio_future_blocking = False
    awaited.add_done_callback(lambda _: _step(coro))
    return True


def describe_error(msg: aiohttp.WSMessage) -> str:
    """An ERROR message's reason (aiohttp puts the exception in `data`), safe to log."""
    exc = msg.data
    if isinstance(exc, aiohttp.WebSocketError) and exc.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
        return "frame larger than the size limit"
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else "websocket error"
