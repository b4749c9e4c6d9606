"""One port, two libraries: stream upgrades go to picows, everything else to aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp
import pytest

from callbridge.server import picows_streams
from callbridge.server.picows_streams import PICOWS_STREAMS
from callbridge.server.state import APP_STATE
from callbridge.testing.fake_agent import FakeVoiceAgent
from tests.conftest import BOTH_STREAM_SERVERS, RunningServer, ServerFactory
from tests.helpers.raw_twilio import announce, connect_stream, sign, start_frame, twilio_session

SOCKET_CLASS = {"picows": "PicowsTwilioSocket", "aiohttp": "AiohttpTwilioSocket"}


async def live_socket_class(server: RunningServer, fake_agent: FakeVoiceAgent) -> str:
    """The class of the Twilio socket of the one call, once its agent session is open."""
    await fake_agent.wait_for_session()
    (runner,) = server.app[APP_STATE].registry.live.values()
    return type(runner._twilio).__name__


@BOTH_STREAM_SERVERS
async def test_streams_are_served_by_the_configured_library(
    server: RunningServer, fake_agent: FakeVoiceAgent, twilio_transport: str
) -> None:
    async with twilio_session() as http:
        call = await announce(http, server)
        ws = await connect_stream(http, server, call)
        await ws.send_str(start_frame(call.token))
        assert await live_socket_class(server, fake_agent) == SOCKET_CLASS[twilio_transport]
        await ws.close()


async def raw_exchange(server: RunningServer, *parts: bytes) -> bytes:
    """Send `parts` as separate writes (a pause between them); return the response head."""
    url = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)  # separate segments, not a synchronisation
        async with asyncio.timeout(10):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()


def upgrade_request(path: str, signature: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: callbridge.example.test\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"X-Twilio-Signature: {signature}\r\n\r\n"
    ).encode()


async def test_a_request_line_split_across_segments_still_reaches_picows(
    server: RunningServer,
) -> None:
    async with twilio_session() as http:
        call = await announce(http, server)
    request = upgrade_request(call.stream_path, sign(call.wss_url, {}))
    head = await raw_exchange(server, request[:3], request[3:9], request[9:])
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"aiohttp" not in head  # aiohttp names itself in a Server header; picows does not


async def test_an_unsigned_upgrade_is_refused_by_picows_as_by_aiohttp(
    server: RunningServer,
) -> None:
    async with twilio_session() as http:
        call = await announce(http, server)
    head = await raw_exchange(server, upgrade_request(call.stream_path, "bogus"))
    assert head.startswith(b"HTTP/1.1 403"), head
    assert server.app[APP_STATE].registry.live == {}


async def test_silent_and_vanishing_connections_hold_up_nobody(
    start_server: ServerFactory,
) -> None:
    server = await start_server(callbridge_request_timeout_seconds=0.3)
    url = urlsplit(server.url)
    # One connection says nothing and leaves; one stops mid-way through its request line,
    # too early to tell whether it is a stream.
    _, gone = await asyncio.open_connection(url.hostname, url.port)
    gone.close()
    reader, stalled = await asyncio.open_connection(url.hostname, url.port)
    stalled.write(b"GET /media-str")
    async with twilio_session() as http, http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200  # others are served meanwhile
    # At the request deadline the routing gives up on it and closes it (its bytes unread:
    # a reset).
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
    stalled.close()


async def test_an_unusable_picows_protocol_leaves_streams_to_aiohttp(
    start_server: ServerFactory,
    fake_agent: FakeVoiceAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def changed_picows(*args: object, **kwargs: object) -> Callable[[], object]:
        def build() -> object:
            raise TypeError("WSProtocol() takes 16 positional arguments but 15 were given")

        return build

    monkeypatch.setattr(picows_streams, "server_protocol_factory", changed_picows)
    server = await start_server(assemblyai_agent_url=fake_agent.url)
    assert not server.app[PICOWS_STREAMS].serving
    async with twilio_session() as http:
        call = await announce(http, server)
        ws = await connect_stream(http, server, call)
        await ws.send_str(start_frame(call.token))
        assert await live_socket_class(server, fake_agent) == "AiohttpTwilioSocket"
        await ws.close()


async def test_a_stream_on_a_reused_connection_is_served_by_aiohttp_with_a_warning(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    state = server.app[APP_STATE]
    assert state.picows_streams and not state.warned_stream_on_aiohttp
    # A keep-alive client (a proxy reusing upstream connections, say): the webhook's
    # connection carries the upgrade too.
    async with aiohttp.ClientSession() as http:
        call = await announce(http, server)
        ws = await connect_stream(http, server, call)
        await ws.send_str(start_frame(call.token))
        assert await live_socket_class(server, fake_agent) == "AiohttpTwilioSocket"
        await ws.close()
    assert state.warned_stream_on_aiohttp


async def test_a_stream_first_on_its_connection_is_not_blamed_on_a_proxy(
    server: RunningServer,
) -> None:
    # An absolute-form request line does not start as the main port routes to picows:
    # aiohttp serves the upgrade, as the first request of its connection, so no proxy
    # is reusing connections and nothing is said of one.
    state = server.app[APP_STATE]
    async with twilio_session() as http:
        call = await announce(http, server)
    absolute = f"http://callbridge.example.test{call.stream_path}"
    request = upgrade_request(call.stream_path, sign(call.wss_url, {}))
    request = request.replace(f"GET {call.stream_path}".encode(), f"GET {absolute}".encode())
    head = await raw_exchange(server, request)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"aiohttp" in head  # served by aiohttp
    assert not state.warned_stream_on_aiohttp
