"""Opening the upstream WebSocket to the Voice Agent API (the adapter's only network code)."""

from __future__ import annotations

import asyncio

import aiohttp

# The agent never sends frames anywhere near this; it bounds memory if it misbehaves.
MAX_AGENT_MESSAGE_BYTES = 4 * 1024 * 1024


class AgentConnectError(Exception):
    """Why the socket could not be opened; safe to log (never contains the key)."""


async def open_agent_socket(
    http: aiohttp.ClientSession,
    url: str,
    api_key: str,
    *,
    timeout: float = 10.0,
    heartbeat: float | None = 3.0,
) -> aiohttp.ClientWebSocketResponse:
    """Connect with the key in the Authorization header (server-to-server: no token needed).

    `heartbeat` pings the peer every few seconds; no pong within half that and the socket
    is closed, so a black-holed connection is noticed in about 4.5 s, not when TCP gives up.
    """
    try:
        async with asyncio.timeout(timeout):
            return await http.ws_connect(
                url,
                headers={"Authorization": f"Bearer {api_key}"},
                heartbeat=heartbeat,
                max_msg_size=MAX_AGENT_MESSAGE_BYTES,
                autoping=True,
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise AgentConnectError(f"upgrade refused with HTTP {exc.status}") from None
    except TimeoutError:
        raise AgentConnectError(f"no connection within {timeout:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise AgentConnectError(f"{type(exc).__name__}: {exc}") from None
