"""A Media Streams socket driven by hand: malformed frames, frames out of order, oversize
frames and vanishing sockets. Each is logged and handled; no other call is touched."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from unittest.mock import ANY

import aiohttp
import pytest

from callbridge.bot import bot
from callbridge.testing.audio import FRAME_BYTES
from callbridge.testing.fake_agent import FakeVoiceAgent
from callbridge.testing.twilio_simulator import TwilioSimulator
from tests.conftest import BOTH_AUDIO_PATHS, BOTH_STREAM_SERVERS, RunningServer, ServerFactory
from tests.helpers.log_events import caught
from tests.helpers.raw_twilio import (
    CALL_SID,
    STREAM_SID,
    announce,
    connect_stream,
    media_frame,
    open_live_stream,
    start_frame,
    twilio_session,
)
from tests.helpers.records import fetch_record

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
    start_server: ServerFactory, fake_agent: FakeVoiceAgent
) -> None:
    # Twilio's next stream is waited for this long (the TwiML's <Redirect>); none comes.
    server = await start_server(
        assemblyai_agent_url=fake_agent.url, callbridge_stream_lost_seconds=0.5
    )
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


def media_bytes(payload: bytes, track: bytes = b"inbound") -> bytes:
    """A media frame's bytes, with bytes of our choosing in the payload and the track."""
    return (
        b'{"event":"media","sequenceNumber":"2","streamSid":"' + STREAM_SID.encode() + b'",'
        b'"media":{"track":"' + track + b'","chunk":"1","timestamp":"20",'
        b'"payload":"' + payload + b'"}}'
    )


NOT_UTF8 = {
    "event": b'{"event":"\xff","streamSid":"x"}',
    # Looks like media: the compiled fast path's base64 check refuses it, the full path reads it.
    "media-payload": media_bytes(b"//////\xff/////8="),
    "stream-sid": media_bytes(b"//////////8=").replace(STREAM_SID.encode(), b"MZ\xc3\x28"),
}


@BOTH_AUDIO_PATHS
@pytest.mark.parametrize("frame", NOT_UTF8.values(), ids=NOT_UTF8.keys())
async def test_text_that_is_not_utf8_fails_the_stream_with_1007(
    server: RunningServer, fake_agent: FakeVoiceAgent, frame: bytes
) -> None:
    with caught() as events:
        async with twilio_session() as http:
            ws, _, session = await open_live_stream(http, server, fake_agent)
            await ws.send_frame(frame, aiohttp.WSMsgType.TEXT)
            msg = await asyncio.wait_for(ws.receive(), 5)
            while msg.type is aiohttp.WSMsgType.TEXT:  # greeting frames already in flight
                msg = await asyncio.wait_for(ws.receive(), 5)
            # The close frame's code (the client's own close_code may say 1006: the server
            # may drop the connection before the client's echo of the close is written).
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1007), msg
            await ws.close()
        await session.wait_for("session.end")
        await events.wait_for("call.ended")
    assert "call.crashed" not in events.names
    assert events.fields_of("twilio.protocol_error") == [
        {"call_id": ANY, "reason": "text frame is not valid UTF-8"}
    ]
    [ended] = events.fields_of("call.ended")
    assert ended["reason"] == "twilio-protocol-error"
    record = await fetch_record(server, CALL_SID)
    assert [(e["source"], e["message"]) for e in record["errors"]] == [
        ("twilio", "text frame is not valid UTF-8")
    ]


@BOTH_AUDIO_PATHS
async def test_media_with_bad_bytes_only_where_callbridge_never_reads_is_relayed(
    server: RunningServer, fake_agent: FakeVoiceAgent
) -> None:
    # Only what the decoder reads is checked for UTF-8 (checking every byte of every frame
    # would cost on the audio path); the checked base64 payload is all that is relayed.
    async with twilio_session() as http:
        ws, _, session = await open_live_stream(http, server, fake_agent)
        await ws.send_frame(media_bytes(b"//////////8=", track=b"\xff"), aiohttp.WSMsgType.TEXT)
        await session.wait_input_audio(8)
        assert bytes(session.input_audio)[:8] == b"\xff" * 8
        await ws.send_str(json.dumps({"event": "stop", "streamSid": STREAM_SID}))
        await session.wait_for("session.end")
