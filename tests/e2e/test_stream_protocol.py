"""A Media Stream's WebSocket protocol, frame by frame over a raw socket: what RFC 6455
asks of the server when a client breaks it, and pings held to the message limit."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest

from tests.conftest import BOTH_STREAM_SERVERS, RunningServer, ServerFactory
from tests.e2e.test_shared_port import upgrade_request
from tests.helpers.raw_twilio import announce, sign, twilio_session

# The frame checks are picows's socket's (aiohttp's reader makes them itself, but answers
# any close with 1000); pings are held to the limit by both.
PICOWS_ONLY = pytest.mark.parametrize("twilio_transport", ["picows"], indirect=True)

TEXT, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x0, 0x8, 0x9, 0xA
PROTOCOL_ERROR, POLICY_VIOLATION = 1002, 1008


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame, masked with a zero key (so the payload goes as is)."""
    assert len(payload) < 126
    return bytes([fin << 7 | rsv << 4 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def close_frame(code: int) -> bytes:
    return frame(CLOSE, struct.pack("!H", code))


class RawStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def next_frame(self) -> tuple[int, bytes]:
        """The server's next frame: opcode and payload (the server does not mask)."""
        head = await self.reader.readexactly(2)
        size = head[1] & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return head[0] & 0x0F, await self.reader.readexactly(size)

    async def close_code(self) -> tuple[int, int]:
        """The code of the server's close frame, and how many pongs came before it."""
        pongs = 0
        async with asyncio.timeout(5):
            while True:
                opcode, payload = await self.next_frame()
                if opcode == CLOSE:
                    return struct.unpack("!H", payload[:2])[0], pongs
                pongs += opcode == PONG


@asynccontextmanager
async def raw_stream(server: RunningServer) -> AsyncIterator[RawStream]:
    """An announced, signed and upgraded stream, no frame sent yet."""
    async with twilio_session() as http:
        call = await announce(http, server)
    url = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(upgrade_request(call.stream_path, sign(call.wss_url, {})))
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        yield RawStream(reader, writer)
    finally:
        writer.close()


@PICOWS_ONLY
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([frame(CONTINUATION, b"{}")], id="continuation-of-nothing"),
        pytest.param([frame(TEXT, b"{}", rsv=0b100)], id="rsv1"),
        pytest.param([frame(TEXT, b"{}", rsv=0b010)], id="rsv2"),
        pytest.param([frame(TEXT, b"{", fin=False, rsv=0b001)], id="rsv3-fragment"),
    ],
)
async def test_a_broken_frame_is_answered_with_a_protocol_error(
    server: RunningServer, frames: list[bytes]
) -> None:
    async with raw_stream(server) as stream:
        for data in frames:
            stream.send(data)
        code, _ = await stream.close_code()
    assert code == PROTOCOL_ERROR


@PICOWS_ONLY
@pytest.mark.parametrize("sent", [1006, 5000])
async def test_a_close_code_no_peer_may_send_is_answered_with_a_protocol_error(
    server: RunningServer, sent: int
) -> None:
    async with raw_stream(server) as stream:
        stream.send(close_frame(sent))
        code, _ = await stream.close_code()
    assert code == PROTOCOL_ERROR


@PICOWS_ONLY
async def test_a_valid_close_code_is_echoed(server: RunningServer) -> None:
    async with raw_stream(server) as stream:
        stream.send(close_frame(4000))
        code, _ = await stream.close_code()
    assert code == 4000


@BOTH_STREAM_SERVERS
async def test_pings_are_answered_within_the_message_limit(server: RunningServer) -> None:
    async with raw_stream(server) as stream:
        stream.send(frame(PING, b"hi"))
        async with asyncio.timeout(5):
            assert await stream.next_frame() == (PONG, b"hi")


@BOTH_STREAM_SERVERS
async def test_a_ping_flood_ends_the_stream(start_server: ServerFactory) -> None:
    server = await start_server(callbridge_max_messages_per_second=60)
    pongs = 0
    async with raw_stream(server) as stream:
        stream.send(frame(PING) * 1000)
        # The server stops reading at the limit: the close frame, or (the pings it left
        # unread reset the connection) the end.
        async with asyncio.timeout(5):
            try:
                while (frame_read := await stream.next_frame())[0] == PONG:
                    pongs += 1
                opcode, payload = frame_read
                assert (opcode, payload[:2]) == (CLOSE, struct.pack("!H", POLICY_VIOLATION))
            except (ConnectionResetError, asyncio.IncompleteReadError):
                pass
    assert pongs <= 60
