"""Both Twilio-side sockets (aiohttp on the main port, picows on the stream listener) against
a client that stops reading or sends binary frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from picows import ws_create_server

from callbridge.transport import MAX_UNSENT_BYTES
from callbridge.twilio import media_stream as twilio
from callbridge.twilio.aiohttp import AiohttpTwilioSocket
from callbridge.twilio.media_stream import TwilioProtocolError
from callbridge.twilio.picows import PicowsTwilioSocket
from callbridge.twilio.socket import TwilioSocket
from tests.helpers.socket_helpers import flood_until_closed, one_route_server


@dataclass
class Served:
    """The server side of one connection: the socket, and what its serve() reported."""

    socket: TwilioSocket
    texts: list[bytes] = field(default_factory=list)
    events: list[object] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def on_text(self, data: bytes | str | memoryview) -> bool:
        self.texts.append(data.encode() if isinstance(data, str) else bytes(data))
        return data != b"stop" and data != "stop"

    def on_event(self, event: object) -> None:
        self.events.append(event)

    async def serve(self) -> None:
        # As the call runner does: a stream that stopped being read is closed with 1008.
        try:
            await self.socket.serve(self.on_text, self.on_event)
            if not self.socket.closed:
                await self.socket.close(1008)
        finally:
            self.done.set()


@pytest.fixture(params=["aiohttp", "picows"])
async def stream_server(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, asyncio.Queue[Served]]]:
    accepted: asyncio.Queue[Served] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()
    if request.param == "aiohttp":

        async def handler(req: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(compress=False)
            await ws.prepare(req)
            served = Served(AiohttpTwilioSocket(ws, req.transport))
            accepted.put_nowait(served)
            await served.serve()
            return ws

        async with one_route_server("/media-stream/x", handler) as url:
            yield url, accepted
    else:

        def started(sock: PicowsTwilioSocket) -> None:
            served = Served(sock)
            accepted.put_nowait(served)
            task = asyncio.get_running_loop().create_task(served.serve())
            tasks.add(task)

        server = await ws_create_server(
            lambda _: PicowsTwilioSocket(started, max_bytes=4096), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/media-stream/x", accepted
        server.close()
        for task in tasks:
            task.cancel()


async def test_a_twilio_that_stops_reading_is_cut_off(
    stream_server: tuple[str, asyncio.Queue[Served]],
) -> None:
    url, accepted = stream_server
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as client:
        served = await asyncio.wait_for(accepted.get(), 5)
        transport = client._response.connection.transport  # type: ignore[union-attr]
        assert transport is not None
        transport.pause_reading()  # Twilio, stuck
        frame = b'{"event":"media","media":{"payload":"' + b"A" * 8000 + b'"}}'
        socket = served.socket
        # Well past the kernel's buffers:
        await flood_until_closed(
            lambda f: socket.send(f), lambda: socket.closed, frame, 64 * MAX_UNSENT_BYTES
        )
        assert served.socket.closed
        await asyncio.wait_for(served.done.wait(), 5)
        reasons = [e.reason for e in served.events if isinstance(e, TwilioProtocolError)]
        assert any("stopped reading" in r for r in reasons), served.events
        served.socket.send(frame)  # after giving up: dropped, no error
        transport.abort()  # this Twilio never reads again: no close handshake to wait for


async def test_binary_frames_are_reported_and_a_stop_closes_with_1008(
    stream_server: tuple[str, asyncio.Queue[Served]],
) -> None:
    url, accepted = stream_server
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as client:
        served = await asyncio.wait_for(accepted.get(), 5)
        await client.send_str('{"event":"connected"}')
        await client.send_bytes(b"\x00\x01")
        await client.send_str("stop")  # on_text says: end the stream
        msg = await asyncio.wait_for(client.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1008  # policy violation
        await asyncio.wait_for(served.done.wait(), 5)
        assert served.texts[0] == b'{"event":"connected"}'
        assert served.texts[-1] == b"stop"
        assert any(isinstance(e, twilio.InvalidFrame) for e in served.events), served.events
