"""Baseline 1: the minimal relay on our own stack (aiohttp server and client, uvloop,
msgspec). Media payload -> input.audio, reply.audio -> media, everything else ignored:
no bridge logic, no signatures, no logging. The floor of what callbridge's stack costs.

    python -m bench.relay_aiohttp --port 3100 --agent-url ws://127.0.0.1:3200/v1/ws
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import msgspec
import uvloop
from aiohttp import web

from bench.relay_common import (
    SESSION_UPDATE,
    decode_agent,
    decode_twilio,
    encode_input_audio,
    encode_media,
    parse_args,
)

_HTTP = web.AppKey("http", aiohttp.ClientSession)
_AGENT_URL = web.AppKey("agent_url", str)
_TEXT = aiohttp.WSMsgType.TEXT


async def _pump(
    upstream: aiohttp.ClientWebSocketResponse, ws: web.WebSocketResponse, sid: str
) -> None:
    async for msg in upstream:
        if msg.type is not _TEXT:
            continue
        try:
            frame = decode_agent(msg.data)
        except msgspec.DecodeError:
            continue
        if frame.type == "reply.audio" and frame.data is not None and not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.send_str(encode_media(sid, frame.data).decode())


async def _stream(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    upstream: aiohttp.ClientWebSocketResponse | None = None
    pump: asyncio.Task[None] | None = None
    try:
        async for msg in ws:
            if msg.type is not _TEXT:
                continue
            try:
                frame = decode_twilio(msg.data)
            except msgspec.DecodeError:
                continue
            if frame.event == "media":
                if upstream is not None and frame.media is not None and not upstream.closed:
                    await upstream.send_str(encode_input_audio(frame.media.payload).decode())
            elif frame.event == "start" and frame.start is not None and upstream is None:
                upstream = await request.app[_HTTP].ws_connect(
                    request.app[_AGENT_URL], headers={"Authorization": "Bearer bench"}
                )
                await upstream.send_str(SESSION_UPDATE.decode())
                pump = asyncio.create_task(_pump(upstream, ws, frame.start.stream_sid))
            elif frame.event == "stop":
                break
    finally:
        if upstream is not None:
            await upstream.close()
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
    return ws


async def _open_http(app: web.Application) -> None:
    # limit=0: the default pool of 100 connections would stall the 101st call.
    app[_HTTP] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def _close_http(app: web.Application) -> None:
    await app[_HTTP].close()


def main() -> None:
    args = parse_args("python -m bench.relay_aiohttp", __doc__)
    app = web.Application()
    app[_AGENT_URL] = args.agent_url
    app.router.add_get("/media-stream/{call_id}", _stream)
    app.on_startup.append(_open_http)
    app.on_cleanup.append(_close_http)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=2.0,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
