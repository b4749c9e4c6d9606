"""The upstream socket to the Voice Agent API, behind one small interface.

Two implementations: `agent/picows.py` (the default: frames are handled in picows's C
callbacks, with no task switch per frame) and `agent/aiohttp.py` (the same WebSocket
library as the Twilio side). `CALLBRIDGE_AGENT_TRANSPORT` picks one (`agent/dial.py`);
the README gives the numbers behind the default. Either way a socket turns frames into
typed agent events and hands them to one callback, and sends pre-encoded frames without
awaiting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from callbridge.transport import FrameSender

# The agent never sends frames anywhere near this; it bounds memory if it misbehaves.
MAX_AGENT_MESSAGE_BYTES = 4 * 1024 * 1024
# No frame for this long and we ping; no pong within the second figure and the socket is
# closed: a black-holed connection is noticed well before TCP gives up.
PING_AFTER_IDLE_SECONDS = 3.0
PONG_TIMEOUT_SECONDS = 1.5
CONNECT_TIMEOUT_SECONDS = 10.0

AgentTransport = Literal["picows", "aiohttp"]
EventSink = Callable[[object], None]


class AgentConnectError(Exception):
    """Why the socket could not be opened; safe to log (never contains the key)."""


class AgentSocket(FrameSender, Protocol):
    async def serve(self, sink: EventSink) -> tuple[int | None, str]:
        """Hand every event to `sink` until the socket closes; return (close code, reason)."""

    async def close(self) -> None:
        """Close politely (a close frame, a short wait for the peer's), then for good."""
