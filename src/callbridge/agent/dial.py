"""Opening a call's upstream socket: on picows or aiohttp, as CALLBRIDGE_AGENT_TRANSPORT
says (`agent/socket.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from callbridge.agent.socket import AgentConnectError, AgentSocket, AgentTransport

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
            from callbridge.agent.picows import open_picows_socket

            return await open_picows_socket(url, headers)
        from callbridge.agent.aiohttp import open_aiohttp_socket

        if http is None:
            raise AgentConnectError("no HTTP client session")
        return await open_aiohttp_socket(http, url, headers)

    return dial
