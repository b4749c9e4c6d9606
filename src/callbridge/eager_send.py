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

from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import web

_TEXT = aiohttp.WSMsgType.TEXT


def send_text_now(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, frame: bytes
) -> bool:
    """Write `frame`; False if the socket is closing (its reader reports the close)."""
    return _step(ws.send_frame(frame, _TEXT))


def _step(coro: Coroutine[Any, Any, None]) -> bool:
    try:
        awaited = coro.send(None)
    except StopIteration:
        return True
    except (ConnectionError, aiohttp.ClientError, RuntimeError):
        return False
    awaited.add_done_callback(lambda _: _step(coro))
    return True
