"""A Media Streams socket driven by hand: malformed frames, frames out of order, oversize
frames and vanishing sockets. Each is logged and handled; no other call is touched."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from callbridge.bot import bot
from callbridge.testing.audio import FRAME_BYTES
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import BOTH_STREAM_SERVERS, RunningServer
from tests.raw_twilio import (
    STREAM_SID,
    announce,
    connect_stream,
    media_frame,
    start_frame,
    twilio_session,
)

# Each test runs with streams served by aiohttp and by picows.
pytestmark = BOTH_STREAM_SERVERS


SILENT_PAYLOAD = "//////////8="  # 8 bytes of μ-law silence


@asynccontextmanager
async def raw_stream(server: RunningServer) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A correctly announced and signed stream; the caller still has to send `start`."""
    async with twilio_session() as http:
        call = await announce(http, server)
        async with await connect_stream(http, server, call) as ws:
            ws.token = call.token  # type: ignore[attr-defined]
            yield ws


async def receive_json(ws: aiohttp.ClientWebSocketResponse, event: str) -> dict[str, object]:
    while True:
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        if frame.get("event") == event:
            return frame  # type: ignore[no-any-return]


async def test_malformed_frames_are_logged_and_the_call_goes_on(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    async with raw_stream(server) as ws:
        await ws.send_str(media_frame(SILENT_PAYLOAD))  # media before start: dropped
        await ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await ws.send_str(start_frame(ws.token))  # type: ignore[attr-defined]
        session = await fake_agent.wait_for_session()
        await session.wait_sent("session.ready")
        for bad in [
            "{not json",
            '{"event":"party","streamSid":"x"}',
            '{"event":"media","streamSid":"x"}',
            "[1,2,3]",
            media_frame("***not base64***"),
        ]:
            await ws.send_str(bad)
        await ws.send_bytes(b"\x00\x01binary")
        await ws.send_str(media_frame(SILENT_PAYLOAD, seq=3))
        await session.wait_input_audio(8)
        assert bytes(session.input_audio)[:8] == b"\xff" * 8
        # The agent's greeting still reaches this socket: the call is alive.
        frame = await receive_json(ws, "media")
        assert frame["streamSid"] == STREAM_SID
        await ws.send_str(json.dumps({"event": "stop", "streamSid": STREAM_SID}))
        await session.wait_for("session.end")
    assert session.audio_before_ready == 0


async def test_socket_closed_without_stop_ends_the_agent_session(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    async with raw_stream(server) as ws:
        await ws.send_str(start_frame(ws.token))  # type: ignore[attr-defined]
        session = await fake_agent.wait_for_session()
        await session.wait_sent("session.ready")
    # The socket is gone without a `stop`: billing must stop all the same.
    await session.wait_for("session.end")
    await asyncio.wait_for(session.ended.wait(), 5)
    assert session.end_reason == "session.end"


async def test_oversize_frame_closes_only_that_stream(
    server: RunningServer,
    fake_agent: FakeVoiceAgent,
    simulator: TwilioSimulator,
    twilio_transport: str,
) -> None:
    other = await simulator.place_inbound_call()
    other_session = await fake_agent.wait_for_session(0)
    await other_session.wait_sent("session.ready")
    async with raw_stream(server) as ws:
        await ws.send_str(start_frame(ws.token))  # type: ignore[attr-defined]
        session = await fake_agent.wait_for_session(1)
        await session.wait_sent("session.ready")
        await ws.send_str("x" * (70 * 1024))
        msg = await asyncio.wait_for(ws.receive(), 5)
        while msg.type is aiohttp.WSMsgType.TEXT:  # greeting frames already in flight
            msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        # 1009 when the close frame makes it; aiohttp may drop the TCP first (1006).
        assert ws.close_code == 1009 or (twilio_transport == "aiohttp" and ws.close_code == 1006)
    await session.wait_for("session.end")
    # The other call is untouched: its greeting plays in full and its session goes on.
    greeting = fake_agent.reply_audio_for(bot.greeting or "")
    await other.wait_heard(len(greeting), timeout=10)
    assert bytes(other.heard)[: len(greeting)] == greeting
    assert not other_session.ended.is_set()
    other.speak(bytes([0xFE]) * FRAME_BYTES * 5)
    await other_session.wait_input_audio(FRAME_BYTES)
