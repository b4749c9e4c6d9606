"""Writing a text frame on an aiohttp WebSocket without awaiting.

aiohttp's `send_frame` is a coroutine only so that it can wait for the peer to drain a
full buffer; the frame itself is written in its first step. Relaying audio from inside
another socket's callback cannot await, and a task per frame would cost more than the
relay itself. So the coroutine is stepped by hand, as a Task would step it: it nearly
always finishes in the first step; when it waits for the drain instead, the rest of it
runs when the drain is done. Frames stay in order because each is written in its first
step. Callers watch the transport's buffer to give up on a peer that stopped reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import web

_TEXT = aiohttp.WSMsgType.TEXT


SENT, DRAINING, CLOSING = 0, 1, 2


def send_text_now(ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, frame: bytes) -> int:
    """Write `frame`. SENT; DRAINING when aiohttp wanted to wait for the peer (its buffer
    is past the high-water mark: time to look at how much is unsent); CLOSING when the
    socket is closing (its reader reports the close)."""
    return _step(ws.send_frame(frame, _TEXT))


def _step(coro: Coroutine[Any, Any, None]) -> int:
    try:
        awaited = coro.send(None)
    except StopIteration:
        return SENT
    except (ConnectionError, aiohttp.ClientError, RuntimeError):
        return CLOSING
    # What a Task does with a future its coroutine yields: clear the flag that marks it as
    # being awaited (else the next frame's coroutine cannot await the same drain), then
    # resume the coroutine when it is done.
    awaited._asyncio_future_blocking = False
    awaited.add_done_callback(lambda _: _step(coro))
    return DRAINING


def send_text_bounded(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    frame: bytes,
    transport: asyncio.Transport | None,
    max_unsent: int,
) -> int:
    """Write `frame`; return how much is unsent if that is past `max_unsent` (the peer has
    stopped reading: the caller gives up on it), else 0."""
    if send_text_now(ws, frame) != DRAINING or transport is None:
        return 0
    unsent = transport.get_write_buffer_size()
    return unsent if unsent > max_unsent else 0
