"""The Twilio side's socket, behind one small interface (the twin of `agent/socket.py`).

`PicowsTwilioSocket` (`twilio/picows.py`) is a Media Stream that the main port handed to
picows (the default, see `server/shared_port.py` and `server/picows_streams.py`);
`AiohttpTwilioSocket` (`twilio/aiohttp.py`) one served by aiohttp's stream routes
(`CALLBRIDGE_MEDIA_STREAM_TRANSPORT=aiohttp`, or a stream on a reused keep-alive
connection). Either way the runner gets text frames through a callback and sends
pre-encoded frames without awaiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from callbridge.transport import FrameSender
from callbridge.twilio.media_stream import TwilioProtocolError

TextHandler = Callable[[bytes | str | memoryview], bool]  # False: stop reading
EventHandler = Callable[[object], None]


class TwilioSocket(FrameSender, Protocol):
    async def serve(self, on_text: TextHandler, on_event: EventHandler) -> None:
        """Hand each text frame to `on_text` (and anything else, as an event, to `on_event`)
        until the socket closes or `on_text` returns False."""

    async def close(self, code: int) -> None: ...

    @property
    def ended_here(self) -> bool:
        """Whether this side ended the stream (a refused frame, a flood, a stalled peer),
        rather than Twilio or the network: no reason to wait for Twilio's next stream."""

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


def stalled(unsent: int) -> str:
    """Why a socket gave up on Twilio: it stopped reading."""
    return f"Twilio stopped reading ({unsent} bytes unsent)"
