"""The upstream socket to the Voice Agent API, behind one small interface.

Two implementations: `picows_socket` (the default: frames are handled in picows's C
callbacks, with no task switch per frame) and `aiohttp_socket` (the same WebSocket library
as the Twilio side). `CALLBRIDGE_AGENT_TRANSPORT` picks one; the README gives the numbers
behind the default. Either way a socket turns frames into typed agent events and hands
them to one callback, and sends pre-encoded frames without awaiting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import aiohttp

# The agent never sends frames anywhere near this; it bounds memory if it misbehaves.
MAX_AGENT_MESSAGE_BYTES = 4 * 1024 * 1024
# A peer that stops reading: past this much unsent data the socket is given up on (and
# the bridge reconnects) rather than buffering audio without end.
MAX_UNSENT_BYTES = 1024 * 1024
# No frame for this long and we ping; no pong within the second figure and the socket is
# closed: a black-holed connection is noticed within the sum of the two, not when TCP
# gives up.
PING_AFTER_IDLE_SECONDS = 3.0
PONG_TIMEOUT_SECONDS = 1.5
CONNECT_TIMEOUT_SECONDS = 10.0

AgentTransport = Literal["picows", "aiohttp"]
EventSink = Callable[[object], None]


class AgentConnectError(Exception):
    """Why the socket could not be opened; safe to log (never contains the key)."""


class AgentSocket(Protocol):
    @property
    def closed(self) -> bool: ...

    def send(self, frame: bytes) -> None:
        """Queue one text frame. Never raises: a frame for a closing socket is dropped.
        Look it up for each frame, never keep it: a socket may rebind it as its state
        changes (the picows sockets do, so that an open socket's send runs no Python)."""

    async def serve(self, sink: EventSink) -> tuple[int | None, str]:
        """Hand every event to `sink` until the socket closes; return (close code, reason)."""

    async def close(self) -> None:
        """Close politely (a close frame, a short wait for the peer's), then for good."""


AgentDialer = Callable[[], Awaitable[AgentSocket]]


def agent_dialer(
    transport: AgentTransport,
    url: str,
    api_key: str | None,
    http: aiohttp.ClientSession | None = None,
) -> AgentDialer:
    """What a call uses to open its upstream socket (the key travels in a header)."""

    async def dial() -> AgentSocket:
        if api_key is None:
            raise AgentConnectError("ASSEMBLYAI_API_KEY is not set")
        headers = {"Authorization": f"Bearer {api_key}"}
        if transport == "picows":
            from callbridge.agent.picows_socket import open_picows_socket

            return await open_picows_socket(url, headers)
        from callbridge.agent.aiohttp_socket import open_aiohttp_socket

        if http is None:
            raise AgentConnectError("no HTTP client session")
        return await open_aiohttp_socket(http, url, headers)

    return dial
