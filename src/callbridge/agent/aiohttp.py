"""The upstream socket on aiohttp (the Twilio side's WebSocket library): the alternative
to `agent/picows.py`, chosen with CALLBRIDGE_AGENT_TRANSPORT=aiohttp."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from callbridge.agent import events as agent
from callbridge.agent.socket import (
    CONNECT_TIMEOUT_SECONDS,
    MAX_AGENT_MESSAGE_BYTES,
    PING_AFTER_IDLE_SECONDS,
    AgentConnectError,
    EventSink,
)
from callbridge.transport.aiohttp import AiohttpSocket, describe_error

_TEXT = aiohttp.WSMsgType.TEXT


class AiohttpAgentSocket(AiohttpSocket[aiohttp.ClientWebSocketResponse]):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        conn = ws._response.connection
        super().__init__(ws, conn.transport if conn is not None else None)

    def _why_stalled(self, unsent: int) -> str:
        return "the agent stopped reading (send buffer full)"

    async def serve(self, sink: EventSink) -> tuple[int | None, str]:
        ws, reason = self._ws, ""
        # receive(), not `async for`: iteration stops at the close frame without showing
        # it, and its reason is what the agent says about why it hung up.
        receive = ws.receive
        while True:
            msg = await receive()
            kind = msg.type
            if kind is _TEXT:
                sink(agent.decode(msg.data))
            elif kind is aiohttp.WSMsgType.BINARY:
                sink(agent.InvalidEvent("binary frame"))
            elif kind is aiohttp.WSMsgType.ERROR:
                reason = describe_error(msg)
            elif kind is aiohttp.WSMsgType.CLOSE:
                reason = msg.extra or ""
            elif kind is aiohttp.WSMsgType.CLOSING or kind is aiohttp.WSMsgType.CLOSED:
                return ws.close_code, self._gave_up or reason

    async def close(self) -> None:
        if not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.close()


async def open_aiohttp_socket(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> AiohttpAgentSocket:
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            ws = await http.ws_connect(
                url,
                headers=headers,
                # aiohttp pings every `heartbeat` s and closes without a pong in half that.
                heartbeat=PING_AFTER_IDLE_SECONDS,
                max_msg_size=MAX_AGENT_MESSAGE_BYTES,
                autoping=True,
                compress=0,
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise AgentConnectError(f"upgrade refused with HTTP {exc.status}") from None
    except TimeoutError:
        raise AgentConnectError(f"no connection within {CONNECT_TIMEOUT_SECONDS:g} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise AgentConnectError(f"{type(exc).__name__}: {exc}") from None
    return AiohttpAgentSocket(ws)
