"""Both upstream sockets (picows, aiohttp) against a raw WebSocket server on loopback that
misbehaves on request: fragmented and binary frames, custom close codes, a peer that stops
reading, and a sink that raises."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

from callbridge.agent import events as agent
from callbridge.agent.dial import agent_dialer
from callbridge.agent.socket import AgentConnectError, AgentSocket, AgentTransport
from callbridge.transport import MAX_UNSENT_BYTES
from tests.helpers.socket_helpers import flood_until_closed, one_route_server

READY = b'{"type":"session.ready","session_id":"sess_1"}'


@dataclass
class Peer:
    """The server side of one connection, driven by the test."""

    transport: WSTransport
    received: list[bytes] = field(default_factory=list)
    got_frame: asyncio.Event = field(default_factory=asyncio.Event)
    headers: dict[str, str] = field(default_factory=dict)


class _PeerListener(WSListener):
    def __init__(self, peers: asyncio.Queue[Peer], headers: dict[str, str]) -> None:
        self.peers = peers
        self.headers = headers
        self.peer: Peer | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.peer = Peer(transport, headers=self.headers)
        self.peers.put_nowait(self.peer)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        assert self.peer is not None
        if frame.msg_type is WSMsgType.TEXT:
            self.peer.received.append(frame.get_payload_as_bytes())
            self.peer.got_frame.set()
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


@dataclass
class RawServer:
    url: str
    peers: asyncio.Queue[Peer]


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    peers: asyncio.Queue[Peer] = asyncio.Queue()

    def factory(request: WSUpgradeRequest) -> WSListener:
        headers = {k.lower(): str(v) for k, v in request.headers.items()}
        return _PeerListener(peers, headers)

    server = await ws_create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield RawServer(f"ws://127.0.0.1:{port}/v1/ws", peers)
    finally:
        server.close()


@pytest.fixture(params=["picows", "aiohttp"])
async def open_socket(
    request: pytest.FixtureRequest, raw_server: RawServer
) -> AsyncIterator[Callable[[], asyncio.Future[tuple[AgentSocket, Peer]]]]:
    transport: AgentTransport = request.param
    async with aiohttp.ClientSession() as http:
        opened: list[AgentSocket] = []

        async def open_() -> tuple[AgentSocket, Peer]:
            sock = await agent_dialer(transport, raw_server.url, "key-1", http)()
            opened.append(sock)
            peer = await asyncio.wait_for(raw_server.peers.get(), 5)
            return sock, peer

        yield open_  # type: ignore[misc]
        for sock in opened:
            await sock.close()


class Collected:
    def __init__(self) -> None:
        self.events: list[object] = []
        self.arrived = asyncio.Event()

    def __call__(self, event: object) -> None:
        self.events.append(event)
        self.arrived.set()

    async def wait_for(self, count: int) -> list[object]:
        async with asyncio.timeout(5):
            while len(self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.events


async def test_the_key_goes_in_the_authorization_header_and_frames_both_ways(
    open_socket: Callable[[], asyncio.Future[tuple[AgentSocket, Peer]]],
) -> None:
    sock, peer = await open_socket()
    assert peer.headers["authorization"] == "Bearer key-1"
    sock.send(b'{"type":"session.update","session":{}}')
    await asyncio.wait_for(peer.got_frame.wait(), 5)
    assert peer.received == [b'{"type":"session.update","session":{}}']
    sink = Collected()
    serving = asyncio.create_task(sock.serve(sink))
    peer.transport.send(WSMsgType.TEXT, READY)
    events = await sink.wait_for(1)
    assert isinstance(events[0], agent.SessionReady)
    assert events[0].session_id == "sess_1"
    peer.transport.send_close(WSCloseCode(4001), b"bye")
    code, _ = await asyncio.wait_for(serving, 5)
    assert code == 4001
    assert sock.closed


@pytest.mark.parametrize("reason", [b"", b"going away"])
async def test_the_close_reason_is_always_text(
    open_socket: Callable[[], asyncio.Future[tuple[AgentSocket, Peer]]], reason: bytes
) -> None:
    # picows reports a close frame without a reason as None (its stub says str): the
    # socket hands the call "" instead, as the aiohttp socket does.
    sock, peer = await open_socket()
    serving = asyncio.create_task(sock.serve(Collected()))
    peer.transport.send_close(WSCloseCode(1008), reason)
    code, text = await asyncio.wait_for(serving, 5)
    assert (code, text) == (1008, reason.decode())


async def test_a_fragmented_message_is_reassembled_and_a_binary_frame_is_invalid(
    open_socket: Callable[[], asyncio.Future[tuple[AgentSocket, Peer]]],
) -> None:
    sock, peer = await open_socket()
    sink = Collected()
    serving = asyncio.create_task(sock.serve(sink))
    peer.transport.send(WSMsgType.TEXT, READY[:10], fin=False)
    peer.transport.send(WSMsgType.CONTINUATION, READY[10:30], fin=False)
    peer.transport.send(WSMsgType.CONTINUATION, READY[30:], fin=True)
    peer.transport.send(WSMsgType.BINARY, b"\x00\x01")
    peer.transport.send(WSMsgType.TEXT, b"not json")
    events = await sink.wait_for(3)
    assert isinstance(events[0], agent.SessionReady)
    assert isinstance(events[1], agent.InvalidEvent) and events[1].reason == "binary frame"
    assert isinstance(events[2], agent.InvalidEvent) and events[2].reason == "invalid JSON"
    peer.transport.disconnect(graceful=False)  # TCP gone, no close frame
    code, _ = await asyncio.wait_for(serving, 5)
    assert code in (None, 1006)  # aiohttp reports an abnormal closure as 1006


async def test_a_peer_that_stops_reading_is_given_up_on(
    open_socket: Callable[[], asyncio.Future[tuple[AgentSocket, Peer]]],
) -> None:
    sock, peer = await open_socket()
    peer.transport.underlying_transport.pause_reading()
    serving = asyncio.create_task(sock.serve(Collected()))
    frame = b'{"type":"input.audio","audio":"' + b"A" * 8000 + b'"}'
    # Well past the kernel's buffers:
    await flood_until_closed(
        lambda f: sock.send(f), lambda: sock.closed, frame, 32 * MAX_UNSENT_BYTES
    )
    assert sock.closed
    _, reason = await asyncio.wait_for(serving, 5)
    assert "stopped reading" in reason
    sock.send(frame)  # after giving up: dropped, no error


async def test_a_sink_that_raises_surfaces_in_serve(
    open_socket: Callable[[], asyncio.Future[tuple[AgentSocket, Peer]]],
) -> None:
    sock, peer = await open_socket()

    def broken(event: object) -> None:
        raise ValueError("bug in the bridge")

    serving = asyncio.create_task(sock.serve(broken))
    peer.transport.send(WSMsgType.TEXT, READY)
    with pytest.raises(ValueError, match="bug in the bridge"):
        await asyncio.wait_for(serving, 5)


@pytest.mark.parametrize("transport", ["picows", "aiohttp"])
async def test_connect_failures_say_why_without_the_key(transport: AgentTransport) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(AgentConnectError) as refused:
            await agent_dialer(transport, "ws://127.0.0.1:9/v1/ws", "secret-key", http)()
        assert "secret-key" not in str(refused.value)
        with pytest.raises(AgentConnectError, match="ASSEMBLYAI_API_KEY"):
            await agent_dialer(transport, "ws://127.0.0.1:9/v1/ws", None, http)()


async def test_an_upgrade_refusal_names_the_status() -> None:
    from aiohttp import web

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, text="no")

    async with one_route_server("/v1/ws", refuse) as url, aiohttp.ClientSession() as http:
        for transport in ("picows", "aiohttp"):
            with pytest.raises(AgentConnectError, match="HTTP 401"):
                await agent_dialer(transport, url, "k", http)()


@pytest.mark.parametrize("transport", ["picows", "aiohttp"])
async def test_a_peer_that_hangs_up_during_the_upgrade_is_a_connect_failure(
    transport: AgentTransport,
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the whole upgrade request, then nothing
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(AgentConnectError):
                await agent_dialer(transport, f"ws://127.0.0.1:{port}/v1/ws", "k", http)()
    finally:
        server.close()
